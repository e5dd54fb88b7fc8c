"""Migration at the engine level: a request resumed with the tokens it already produced
continues with exactly the tokens it would have produced had it never moved."""

from __future__ import annotations

from pathlib import Path

import pytest
from pdserve import SamplingParams
from pdserve.engine.llm_engine import LLMEngine
from pdserve.engine.sequence import SequenceStatus
from pdserve.errors import InvalidRequestError
from pdserve.outputs import RequestOutput
from test_kv_transfer import run_to_completion as run

PROMPT = list(range(3, 90))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=20, temperature=0.8, top_k=40, seed=7, ignore_eos=True),
    ],
    ids=["greedy", "seeded"],
)
@pytest.mark.parametrize("cut", [1, 9])
def test_resumed_request_continues_identically(model_dirs: dict[str, Path], params: SamplingParams, cut: int) -> None:
    engine = LLMEngine.from_model(model_dirs["llama"])
    engine.add_request("whole", PROMPT, params)
    expected = run(engine)["whole"]
    engine.add_request("moved", PROMPT, params, resume_token_ids=expected[:cut])
    got = run(engine)["moved"]
    assert got == expected  # the output includes the resumed tokens, then the same continuation
    assert engine.kv_blocks_used == 0
    engine.check_integrity()


def test_resume_through_export_and_import(model_dirs: dict[str, Path]) -> None:
    """Prefill worker re-prefills prompt + delivered tokens; decode worker continues from there."""
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    alone = LLMEngine.from_model(model_dirs["qwen2"])
    alone.add_request("r", PROMPT, params)
    expected = run(alone)["r"]

    prefill = LLMEngine.from_model(model_dirs["qwen2"])
    prefill.add_request("r", PROMPT, params, hold_kv=True, resume_token_ids=expected[:5])
    outputs = []
    while prefill.scheduler.has_work():
        outputs += prefill.step()
    assert prefill.requests["r"].status is SequenceStatus.PARKED
    assert outputs[-1].new_token_ids == [expected[5]]
    export = prefill.export_kv("r")
    prefill.release_kv("r")
    assert export.resumed_tokens == 5 and export.num_tokens == len(PROMPT) + 5
    decode = LLMEngine.from_model(model_dirs["qwen2"])
    seq = decode.import_kv(export, params)
    assert seq.prompt_token_ids == PROMPT
    assert run(decode)["r"] == expected
    decode.check_integrity()
    assert decode.kv_blocks_used == 0


def test_resume_refuses_what_cannot_continue(model_dirs: dict[str, Path]) -> None:
    engine = LLMEngine.from_model(model_dirs["llama"])
    params = SamplingParams(max_tokens=4, temperature=0.0)
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        engine.add_request("a", PROMPT, params, resume_token_ids=[5, 6, 7, 8])
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        engine.add_request("b", PROMPT, params, resume_token_ids=[10**9])
    assert not engine.requests


def _final_outputs(engine: LLMEngine) -> dict[str, RequestOutput]:
    done: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return done


def test_top_logprobs_stay_aligned_through_resume_and_handoff(model_dirs: dict[str, Path]) -> None:
    """Alternatives are per output token: a resumed request has {} for the tokens it had already
    delivered, then the same alternatives as the uninterrupted run, and so does a hand-off."""
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, top_logprobs=3)
    engine = LLMEngine.from_model(model_dirs["llama"], dtype="float32")
    engine.add_request("whole", PROMPT, params)
    whole = _final_outputs(engine)["whole"]
    assert whole.top_logprobs is not None and len(whole.top_logprobs) == 12
    engine.add_request("moved", PROMPT, params, resume_token_ids=whole.token_ids[:4])
    moved = _final_outputs(engine)["moved"]
    assert moved.top_logprobs is not None and moved.top_logprobs[:4] == [{}] * 4
    _assert_same_alternatives(moved.top_logprobs[4:], whole.top_logprobs[4:])

    engine.add_request("handed", PROMPT, params, hold_kv=True)
    while engine.scheduler.has_work():
        engine.step()
    export = engine.export_kv("handed")
    engine.release_kv("handed")
    assert export.first_top_logprobs is not None
    decode = LLMEngine.from_model(model_dirs["llama"], dtype="float32")
    decode.import_kv(export, params)
    handed = _final_outputs(decode)["handed"]
    assert handed.top_logprobs is not None
    _assert_same_alternatives(handed.top_logprobs, whole.top_logprobs)


def _assert_same_alternatives(got: list[dict[int, float]], want: list[dict[int, float]]) -> None:
    assert [list(t) for t in got] == [list(t) for t in want]
    for got_top, want_top in zip(got, want, strict=True):
        assert list(got_top.values()) == pytest.approx(list(want_top.values()), abs=1e-4)
