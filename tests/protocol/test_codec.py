"""The wire codec: every message round-trips, bad bytes are refused with a clear ProtocolError."""

from __future__ import annotations

import dataclasses
import time

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pdserve.errors import ProtocolError
from pdserve.protocol import (
    CancelRequest,
    GenerateTask,
    TaskAck,
    TokenChunk,
    decode,
    encode,
    params_from_wire,
    params_to_wire,
)
from pdserve.sampling_params import SamplingParams

params_strategy = st.builds(
    SamplingParams,
    max_tokens=st.integers(1, 4096),
    temperature=st.floats(0.0, 2.0),
    top_k=st.integers(0, 50),
    top_p=st.floats(0.01, 1.0),
    seed=st.none() | st.integers(0, 2**31),
    stop=st.lists(st.text(min_size=1, max_size=8), max_size=3),
    stop_token_ids=st.lists(st.integers(0, 1000), max_size=3),
    ignore_eos=st.booleans(),
    logprobs=st.booleans(),
    include_stop_str_in_output=st.booleans(),
)


@given(params_strategy)
def test_params_on_the_wire_are_what_asdict_gives_and_come_back_equal(params: SamplingParams) -> None:
    wire = params_to_wire(params)
    assert wire == dataclasses.asdict(params)
    assert wire["stop"] is not params.stop and wire["stop_token_ids"] is not params.stop_token_ids  # copies
    assert params_from_wire(wire) == params


@given(params_strategy, st.lists(st.integers(0, 50_000), min_size=1, max_size=64))
def test_a_task_round_trips(params: SamplingParams, prompt: list[int]) -> None:
    task = GenerateTask("r-1", prompt, params_to_wire(params), "c.stream.r.r-1", time.time(), "decode-0", [1, 2])
    assert decode(encode(task), GenerateTask) == task


@pytest.mark.parametrize(
    "message",
    [
        TaskAck(accepted=True),
        TaskAck(accepted=False, reason="worker queue is full", code=429),
        TokenChunk(request_id="r", worker_id="w", index=3, token_ids=[5, 6], finish_reason="length"),
        CancelRequest("r", "client went away"),
    ],
)
def test_messages_round_trip(message: object) -> None:
    assert decode(encode(message), type(message)) == message


def test_bad_bytes_are_refused_clearly() -> None:
    good = msgpack.unpackb(encode(TaskAck(accepted=True)))
    with pytest.raises(ProtocolError, match="not msgpack"):
        decode(b"\xc1", TaskAck)
    with pytest.raises(ProtocolError, match="not a map"):
        decode(msgpack.packb([1, 2]), TaskAck)
    with pytest.raises(ProtocolError, match="protocol version"):
        decode(msgpack.packb({**good, "v": 99}), TaskAck)
    with pytest.raises(ProtocolError, match="expected a TaskAck"):
        decode(encode(CancelRequest("r", "x")), TaskAck)
    with pytest.raises(ProtocolError, match="accepted"):
        decode(msgpack.packb({**good, "accepted": "yes"}), TaskAck)
    with pytest.raises(ProtocolError, match="missing field 'accepted'"):
        decode(msgpack.packb({k: v for k, v in good.items() if k != "accepted"}), TaskAck)


@pytest.mark.parametrize(
    ("prompt", "culprit"),
    [([1, True, 3], "bool"), ([1, 2.0], "float"), ([1, "2"], "str"), ([None], "NoneType"), ("123", "str")],
)
def test_token_id_lists_refuse_anything_but_integers(prompt: object, culprit: str) -> None:
    good = msgpack.unpackb(encode(GenerateTask("r", [1], {}, "s", 1.0)))
    with pytest.raises(ProtocolError, match=f"GenerateTask.prompt_token_ids: expected .*{culprit}"):
        decode(msgpack.packb({**good, "prompt_token_ids": prompt}), GenerateTask)


def test_a_long_prompt_decodes_to_the_same_ids() -> None:
    ids = [*range(50_000), 2**40, 0]
    assert decode(encode(GenerateTask("r", ids, {}, "s", 1.0)), GenerateTask).prompt_token_ids == ids
