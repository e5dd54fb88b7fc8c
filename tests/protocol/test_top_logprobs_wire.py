"""Top alternatives on the wire: two parallel lists per token, checked where they are read."""

from __future__ import annotations

import pytest
from pdserve import SamplingParams
from pdserve.errors import InvalidRequestError, ProtocolError
from pdserve.protocol import KvOffer, TokenChunk, decode, encode
from pdserve.protocol.top_logprobs import (
    MAX_PROMPT_LOGPROB_VALUES,
    check_prompt_logprobs_size,
    top_from_wire,
    top_to_wire,
)
from pdserve.sampling_params import MAX_TOP_LOGPROBS
from pdserve.services.decode import first_top_logprobs
from pdserve.services.router.choice_stream import _top_logprobs


def test_round_trip_keeps_order_and_values() -> None:
    tops = [{7: -0.1, 3: -2.5, 9: -3.0}, {}, {1: -0.0}]
    ids, logprobs = top_to_wire(tops)
    assert ids == [[7, 3, 9], [], [1]]
    chunk = decode(encode(TokenChunk("r", 0, [7, 5, 1], "w", top_token_ids=ids, top_logprobs=logprobs)), TokenChunk)
    back = top_from_wire(chunk.top_token_ids or [], chunk.top_logprobs or [], "TokenChunk")
    assert back == tops and [list(t) for t in back] == [[7, 3, 9], [], [1]]


@pytest.mark.parametrize(
    ("ids", "logprobs"),
    [
        ([[1, 2]], [[-0.1]]),  # a token's lists differ in length
        ([[1]], [[-0.1], [-0.2]]),  # token counts differ
        ([list(range(MAX_TOP_LOGPROBS + 1))], [[-1.0] * (MAX_TOP_LOGPROBS + 1)]),  # too many
    ],
)
def test_lists_that_do_not_pair_up_are_refused(ids: list[list[int]], logprobs: list[list[float]]) -> None:
    with pytest.raises(ProtocolError, match="TokenChunk"):
        top_from_wire(ids, logprobs, "TokenChunk")


def test_wrong_types_fail_decoding() -> None:
    bad = encode(TokenChunk("r", 0, [1], "w", top_token_ids=[["x"]], top_logprobs=[[-1.0]]))  # type: ignore[list-item]
    with pytest.raises(ProtocolError, match="top_token_ids"):
        decode(bad, TokenChunk)


def test_router_leaves_out_alternatives_that_do_not_pair_up() -> None:
    chunk = TokenChunk("r", 0, [1, 2], "w", top_token_ids=[[1], [2, 3]], top_logprobs=[[-0.5], [-0.1]])
    assert _top_logprobs(chunk, 0) is None  # the response goes out without them, not as a failure
    good = TokenChunk("r", 0, [1, 2], "w", top_token_ids=[[1], [2, 3]], top_logprobs=[[-0.5], [-0.1, -3.0]])
    assert _top_logprobs(good, 1) == [{2: -0.1, 3: -3.0}]  # `skip` drops tokens already delivered


def _offer(**extra: object) -> KvOffer:
    return KvOffer(
        request_id="r",
        prompt_token_ids=[1, 2, 3],
        first_token=4,
        params={},
        layout={},
        layer_nbytes=0,
        stream_subject="s",
        deadline=0.0,
        **extra,  # type: ignore[arg-type]
    )


def test_offer_carries_the_first_tokens_alternatives() -> None:
    offer = decode(encode(_offer(first_top_token_ids=[4, 8], first_top_logprobs=[-0.2, -1.9])), KvOffer)
    assert first_top_logprobs(offer) == {4: -0.2, 8: -1.9}
    assert first_top_logprobs(_offer()) is None
    with pytest.raises(ProtocolError, match="come together"):
        first_top_logprobs(_offer(first_top_token_ids=[4]))
    with pytest.raises(ProtocolError, match="KvOffer"):
        first_top_logprobs(_offer(first_top_token_ids=[4, 8], first_top_logprobs=[-0.2]))


def test_prompt_scores_must_fit_one_message() -> None:
    """The largest prompt scoring allowed fits under nats-server's default 1 MB payload."""
    limit = MAX_PROMPT_LOGPROB_VALUES
    tokens = limit // 21
    check_prompt_logprobs_size(tokens, SamplingParams(prompt_logprobs=20))
    check_prompt_logprobs_size(10**6, SamplingParams())  # not asked for: no limit
    with pytest.raises(InvalidRequestError, match="over the limit"):
        check_prompt_logprobs_size(tokens + 1, SamplingParams(prompt_logprobs=20))
    # Worst case on the wire: float64 logprobs and 5-byte token ids.
    ids = [[(1 << 31) - 1] * 20 for _ in range(tokens)]
    values = [[-12.345678901234] * 20 for _ in range(tokens)]
    chunk = TokenChunk(
        "r" * 64,
        0,
        [1],
        "w" * 32,
        prompt_logprobs=[-1.2345678901] * tokens,
        prompt_top_token_ids=ids,
        prompt_top_logprobs=values,
    )
    assert len(encode(chunk)) < 1 << 20
