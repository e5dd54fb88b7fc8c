"""Top alternatives per token (SamplingParams.top_logprobs) on the wire.

In Python a token's alternatives are a dict, token id -> logprob, best first. msgpack maps take
string keys only (and decoding is strict about it), so on the wire they travel as two parallel
lists per token: the ids and their logprobs.
"""

from __future__ import annotations

from pdserve.errors import ProtocolError
from pdserve.sampling_params import MAX_TOP_LOGPROBS

TopLogprobs = dict[int, float]  # one token's alternatives: id -> logprob, best first


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
