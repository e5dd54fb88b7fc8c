"""Structured output for reasoning models: free thinking first, then the grammar.

A reasoning model writes `<think>...</think>` before its answer. Held to a JSON grammar from the
first token it cannot think at all, and answers worse. With `SamplingParams.reasoning_parser`
the grammar starts where that parser says the answer starts, as vLLM does with its reasoning
parsers:

- `deepseek_r1`: the template opened the block in the prompt; anything goes up to `</think>`.
- `qwen3`: the reply either opens with `<think>` (then anything goes up to `</think>`) or is
  held to the grammar from its first character (`enable_thinking: false`): both branches are
  followed until the text picks one.

Once the answer starts, the state *is* the grammar's own state, so masks, `can_end` and
`complete` work as without thinking. While thinking, eos is not allowed: the answer must come
(max_tokens can still cut it short). States are immutable like the grammars they wrap, so the
engine drives them the same way, and a handed-off request rebuilds its state by feeding its
output again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from pdserve.sampling_params import REASONING_PARSERS

if TYPE_CHECKING:
    from pdserve.engine.sequence import Grammar

THINK_START = "<think>"
THINK_END = "</think>"


class Thinking(NamedTuple):
    """Inside the thinking block: any text, until `</think>`; `tail` may be the start of it."""

    answer: Grammar  # the grammar's start state, for the answer
    tail: str = ""

    @property
    def mask_key(self) -> tuple[object, object]:
        owner, key = self.answer.mask_key
        return owner, ("thinking", key, self.tail)

    @property
    def can_end(self) -> bool:
        return False

    @property
    def complete(self) -> bool:
        return False

    def feed(self, text: str) -> Grammar | Thinking | Opening | None:
        written = self.tail + text
        end = written.find(THINK_END)
        if end < 0:
            return Thinking(self.answer, written[-(len(THINK_END) - 1) :])
        rest = written[end + len(THINK_END) :]
        return self.answer.feed(rest) if rest else self.answer


class Opening(NamedTuple):
    """Qwen3's start: `<think>` being written (`written`), or the answer (`answer`, None once
    the text has ruled it out)."""

    answer: Grammar | None
    start: Grammar  # the grammar's start state, for the answer after thinking
    written: str = ""

    @property
    def mask_key(self) -> tuple[object, object]:
        owner, start = self.start.mask_key
        answer = None if self.answer is None else self.answer.mask_key[1]
        return owner, ("opening", start, answer, self.written)

    @property
    def can_end(self) -> bool:
        return self.answer is not None and self.answer.can_end

    @property
    def complete(self) -> bool:
        return False

    def feed(self, text: str) -> Grammar | Thinking | Opening | None:
        answer = self.answer.feed(text) if self.answer is not None else None
        written = self.written + text
        opened = written.lstrip()
        if opened.startswith(THINK_START):
            return Thinking(self.start).feed(opened[len(THINK_START) :])
        if THINK_START.startswith(opened):  # still on the way to <think> (or only blanks)
            return Opening(answer, self.start, written)
        return answer  # no thinking: the grammar alone (None if it refuses the text too)


def thinking_first(start: Grammar, parser: str) -> Grammar | Thinking | Opening:
    """The state of a reply that may think before `start`'s grammar holds."""
    if parser == "deepseek_r1":
        return Thinking(start)
    if parser == "qwen3":
        return Opening(start, start)
    raise ValueError(f"reasoning_parser must be one of {REASONING_PARSERS}, got {parser!r}")
