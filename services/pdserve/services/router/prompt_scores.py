"""vLLM's `prompt_logprobs` request field: the prompt scored token by token, in vLLM's shape.

`prompt_logprobs: k` answers with one entry per prompt token: null for the first (nothing
scores it), then a map token id (as a string) -> {logprob, rank, decoded_token} holding the
prompt token itself and the k most likely tokens at that position (k or k + 1 entries, as in
vLLM). Completions put it on each choice, chat completions on the response, as vLLM does. It
needs the whole prompt scored before the answer, so, as in vLLM, it is refused with streaming.
"""

from __future__ import annotations

import math

from pdserve.protocol.top_logprobs import TopLogprobs
from pdserve.services.router.api_responses import PromptLogprob
from pdserve.services.router.choice_stream import ChoiceStream
from pdserve.services.router.errors import invalid_request
from pdserve.services.router.logprobs import TokenTexts

# JSON has no -inf: a token the model rules out entirely gets vLLM's stand-in.
MIN_LOGPROB = -9999.0

PromptScores = list[dict[str, PromptLogprob] | None]


def check_prompt_logprobs(prompt_logprobs: int | None, stream: bool, echo_scores: bool = False) -> None:
    """400 for what cannot be answered: with streaming (vLLM refuses it too), or together with an
    echoed prompt's logprobs (completions' `echo` with `logprobs`, which score the prompt already)."""
    if prompt_logprobs is None:
        return
    if stream:
        raise invalid_request("prompt_logprobs is not available with stream: true", param="prompt_logprobs")
    if echo_scores:
        raise invalid_request(
            "prompt_logprobs with echo and logprobs: both score the prompt; ask for one", param="prompt_logprobs"
        )


def prompt_scores(choice: ChoiceStream, texts: TokenTexts) -> PromptScores:
    """The choice's prompt in vLLM's `prompt_logprobs` shape; null entries where the workers sent
    no scores (they always do unless a worker is older than this router)."""
    prompt = choice.prompt_token_ids
    logprobs = choice.prompt_logprobs
    if logprobs is None or len(logprobs) != len(prompt) - 1:
        return [None] * len(prompt)
    ranks = choice.prompt_ranks if choice.prompt_ranks is not None else [None] * len(logprobs)
    tops: list[TopLogprobs] = choice.prompt_top_logprobs or [{} for _ in logprobs]
    scores: PromptScores = [None]
    for token, logprob, rank, top in zip(prompt[1:], logprobs, ranks, tops, strict=True):
        entry = {str(token): _entry(logprob, rank, texts(token))}
        for place, (alternative, alternative_logprob) in enumerate(top.items(), start=1):
            entry.setdefault(str(alternative), _entry(alternative_logprob, place, texts(alternative)))
        scores.append(entry)
    return scores


def _entry(logprob: float, rank: int | None, text: str) -> PromptLogprob:
    return PromptLogprob(logprob=logprob if math.isfinite(logprob) else MIN_LOGPROB, rank=rank, decoded_token=text)
