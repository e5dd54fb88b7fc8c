"""Reasoning models: the thinking a model writes between <think> and </think>, apart from its answer.

`pdserve router --reasoning-parser NAME` (vLLM's flag and names) puts that text in
`message.reasoning_content` (streamed: `delta.reasoning_content`) and the rest in `content`, as
vLLM's OpenAI server does, so clients that show or drop the thinking see it where they look.

- `deepseek_r1`: DeepSeek-R1 and its distills, and thinking-only models whose template opens the
  `<think>` block in the prompt (Qwen3-*-Thinking-2507): everything up to `</think>` is reasoning;
  a reply that never closes the block (cut by max_tokens) is all reasoning.
- `qwen3`: Qwen3's hybrid models: a reply that opens with `<think>` reasons up to `</think>`; one
  that does not (`enable_thinking: false`) is all content.

Streamed, a tag split across chunks is held back until it is whole, so neither tag ever reaches
the client and the pieces add up to the non-streamed split.
"""

from __future__ import annotations

from typing import Literal

from pdserve.engine.thinking_grammar import THINK_END, THINK_START
from pdserve.sampling_params import REASONING_PARSERS
from pdserve.services.router.text_tags import tag_start_at_end

__all__ = ["REASONING_PARSERS", "ReasoningStream", "split_reasoning"]

Piece = tuple[Literal["reasoning", "content"], str]


def split_reasoning(parser: str, text: str) -> tuple[str | None, str]:
    """(the reasoning, or None if there is none; the content) of a whole reply."""
    stream = ReasoningStream(parser)
    pieces = stream.push(text) + stream.finish()
    reasoning = "".join(t for kind, t in pieces if kind == "reasoning")
    content = "".join(t for kind, t in pieces if kind == "content")
    return (reasoning if stream.reasoned else None), content


class ReasoningStream:
    """Splits a reply's text, pushed as it streams, into reasoning and content pieces."""

    def __init__(self, parser: str) -> None:
        if parser not in REASONING_PARSERS:
            raise ValueError(f"reasoning parser must be one of {REASONING_PARSERS}, got {parser!r}")
        self.parser = parser
        self.state: Literal["opening", "reasoning", "content"] = "opening"
        self.held = ""  # text not yet handed out: a possible tag, or the reply's undecided start
        self.reasoned = False  # the reply had a reasoning part (even an empty one)

    @property
    def answering(self) -> bool:
        """The reply is past its thinking (or, for qwen3, has none)."""
        return self.state == "content" or (self.state == "opening" and self.parser == "qwen3")

    def push(self, text: str) -> list[Piece]:
        self.held += text
        pieces: list[Piece] = []
        if self.state == "opening":
            start = self.held.lstrip()
            if not start or (THINK_START.startswith(start) and start != THINK_START):
                return pieces  # blank, or a part of <think>: not decided yet
            if start.startswith(THINK_START):
                self.held = start[len(THINK_START) :]
                self._enter_reasoning()
            elif self.parser == "qwen3":  # no <think>: Qwen3 answered without thinking
                self.state = "content"
            else:  # DeepSeek-R1's template opened the block in the prompt
                self._enter_reasoning()
        if self.state == "reasoning":
            end = self.held.find(THINK_END)
            if end < 0:
                keep = tag_start_at_end(self.held, THINK_END)
                thought, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
                return [*pieces, ("reasoning", thought)] if thought else pieces
            thought, self.held = self.held[:end], self.held[end + len(THINK_END) :]
            if thought:
                pieces.append(("reasoning", thought))
            self.state = "content"
        if self.state == "content" and self.held:
            pieces.append(("content", self.held))
            self.held = ""
        return pieces

    def finish(self) -> list[Piece]:
        """What is still held, once the reply has ended."""
        held, self.held = self.held, ""
        if not held:
            return []
        if self.state == "opening":
            if self.parser == "qwen3":
                return [("content", held)]
            self._enter_reasoning()
            held = held.lstrip()
            if THINK_START.startswith(held):  # only a part of <think> came
                return []
        return [("reasoning" if self.state == "reasoning" else "content", held)]

    def _enter_reasoning(self) -> None:
        self.state = "reasoning"
        self.reasoned = True
