"""What the engine reports about a request after a step."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestOutput:
    """The state of one request.

    `token_ids` are all generated ids so far (eos or a stop token included when one ended the
    request); `new_token_ids` are the ones this step added. `text` is filled once the request
    finishes (the detokenized output, cut before a matched stop string).
    `finish_reason`: None while running, else "stop", "length" or "abort".
    """

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    new_token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    # vLLM's: the stop string or stop token id that ended the output; None for eos, length, a grammar.
    stop_reason: str | int | None = None
    logprobs: list[float] | None = None
    num_cached_tokens: int = 0
    # With SamplingParams.top_logprobs = k: per output token, the k most likely tokens at that
    # position (token id -> logprob, best first). Tokens a migrated request had delivered before
    # it moved have {} here (their alternatives went out with them).
    top_logprobs: list[dict[int, float]] | None = None
    # With SamplingParams.prompt_logprobs = k: the logprob of each prompt token after the ones
    # before it (None for the first, as in vLLM), and its k most likely alternatives (None first
    # too; only for k > 0). In the output of the first token and in the final output.
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[dict[int, float] | None] | None = None
    # ... and each prompt token's rank: how many tokens were at least as likely there (1: the best).
    prompt_ranks: list[int | None] | None = None
    # SamplingParams.n > 1 (LLM.generate): this is completion 0 of the prompt, and `choices`
    # holds all n (this one first); `index` is a completion's place among them.
    index: int = 0
    choices: list[RequestOutput] | None = field(default=None, repr=False, compare=False)  # holds self

    # vLLM's: the prompt as text when it was given as text (LLM.generate), or as the chat template
    # rendered it (LLM.chat); None for a prompt of token ids.
    prompt: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def cumulative_logprob(self) -> float | None:
        """vLLM's: the sum of the output tokens' logprobs, when logprobs were asked for."""
        return None if self.logprobs is None else float(sum(self.logprobs))

    @property
    def outputs(self) -> list[RequestOutput]:
        """vLLM's shape, `out.outputs[i].text`: the prompt's completions (this one alone unless
        SamplingParams.n > 1), so scripts written for vLLM's offline API read our outputs unchanged."""
        return self.choices if self.choices is not None else [self]
