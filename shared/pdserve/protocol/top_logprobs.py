"""Top alternatives per token (SamplingParams.top_logprobs) on the wire.

In Python a token's alternatives are a dict, token id -> logprob, best first. msgpack maps take
string keys only (and decoding is strict about it), so on the wire they travel as two parallel
lists per token: the ids and their logprobs.
"""

from __future__ import annotations

from pdserve.errors import InvalidRequestError, ProtocolError
from pdserve.sampling_params import MAX_TOP_LOGPROBS, SamplingParams

TopLogprobs = dict[int, float]  # one token's alternatives: id -> logprob, best first

# A prompt's logprobs travel in the first token's chunk: prompt tokens x (1 + alternatives)
# values, up to about 14 bytes each in msgpack. This many stay under 1 MB, nats-server's default
# max_payload; a request over it is refused with a clear error rather than lost on the broker.
MAX_PROMPT_LOGPROB_VALUES = 60_000


def check_prompt_logprobs_size(num_prompt_tokens: int, params: SamplingParams) -> None:
    """InvalidRequestError when a prompt's logprobs would not fit in one message."""
    if params.prompt_logprobs is None:
        return
    values = num_prompt_tokens * (1 + params.prompt_logprobs)
    if values > MAX_PROMPT_LOGPROB_VALUES:
        raise InvalidRequestError(
            f"prompt logprobs for {num_prompt_tokens} prompt tokens with {params.prompt_logprobs} alternatives "
            f"each are {values} values, over the limit of {MAX_PROMPT_LOGPROB_VALUES}; ask for fewer "
            f"alternatives or score a shorter prompt"
        )


def top_to_wire(tops: list[TopLogprobs]) -> tuple[list[list[int]], list[list[float]]]:
    return [list(top) for top in tops], [list(top.values()) for top in tops]


def top_from_wire(ids: list[list[int]], logprobs: list[list[float]], where: str) -> list[TopLogprobs]:
    """The alternatives of each token, or ProtocolError when the two lists do not pair up."""
    if len(ids) != len(logprobs):
        raise ProtocolError(f"{where}: {len(ids)} tokens of alternative ids but {len(logprobs)} of logprobs")
    tops = []
    for token_ids, values in zip(ids, logprobs, strict=True):
        if len(token_ids) != len(values) or len(token_ids) > MAX_TOP_LOGPROBS:
            raise ProtocolError(
                f"{where}: {len(token_ids)} alternative ids and {len(values)} logprobs for one token "
                f"(at most {MAX_TOP_LOGPROBS}, pairwise)"
            )
        tops.append(dict(zip(token_ids, values, strict=True)))
    return tops
