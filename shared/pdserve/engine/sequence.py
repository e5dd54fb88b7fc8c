"""One request's state inside the engine: its tokens, its progress and the KV blocks it holds."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from pdserve.engine.choice_grammar import ChoiceState
from pdserve.engine.json_grammar import JsonState
from pdserve.engine.regex_nfa import RegexState
from pdserve.engine.schema_grammar import SchemaState
from pdserve.engine.thinking_grammar import Opening, Thinking
from pdserve.sampling_params import SamplingParams

_arrival = itertools.count()
# What constrains a request's output; each has feed(text), can_end and complete.
Grammar = JsonState | SchemaState | ChoiceState | RegexState | Thinking | Opening


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted and waiting to be recomputed
    RUNNING = "running"  # scheduled every step until it finishes
    PARKED = "parked"  # prefill done, KV held for export (disaggregated prefill)
    FINISHED = "finished"


@dataclass(slots=True)
class Sequence:
    """A request being served.

    `token_ids` holds prompt then output tokens. `num_computed_tokens` counts the tokens whose
    K/V are in the cache; the scheduler computes the rest in chunks, and once every token is
    computed the next one is sampled. After a preemption it falls back to zero (recompute).
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    hold_kv: bool = False  # park after the first token instead of decoding (prefill worker)
    token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # hashes of the full, computed blocks
    finish_reason: str | None = None
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)  # per output token, if asked for
    # params.prompt_logprobs: the logprob of prompt token i + 1 after tokens 0..i (and its
    # alternatives), for i = 0, 1, ...: the first prompt token has nothing to be scored after.
    prompt_logprobs: list[float] = field(default_factory=list)
    prompt_top_logprobs: list[dict[int, float]] = field(default_factory=list)
    prompt_ranks: list[int] = field(default_factory=list)  # each scored prompt token's rank (vLLM's)
    # params.json_object / json_schema / guided_choice / guided_regex: where the output is in the grammar
    grammar: Grammar | None = None
    stop_text: str | None = None  # output text cut at a stop string, when one matched
    stop_reason: str | int | None = None  # vLLM's: the stop string or stop token id that ended it
    num_preemptions: int = 0
    bad_words_ids: list[list[int]] = field(default_factory=list)  # params.bad_words as tokens (bad_words.py)
    arrival: int = field(default_factory=lambda: next(_arrival))

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Prompt logprobs asked for and not all computed yet (a recompute after preemption does
        not score the same tokens twice)."""
        return self.params.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens - 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def block_token_ids(self, index: int, block_size: int) -> list[int]:
        return self.token_ids[index * block_size : (index + 1) * block_size]
