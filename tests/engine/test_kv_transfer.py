"""Export KV after prefill on engine A, import on engine B, decode on B: same tokens as A alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from pdserve import SamplingParams
from pdserve.engine.config import EngineConfig
from pdserve.engine.kv_transfer import KvExport
from pdserve.engine.llm_engine import LLMEngine
from pdserve.engine.sequence import SequenceStatus
from pdserve.errors import KvCapacityError, KvLayoutMismatchError

PROMPTS = [[5, 9, 200, 31] * 10, list(range(3, 140)), [77, 1, 2]]


def run_to_completion(engine: LLMEngine) -> dict[str, list[int]]:
    done: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.token_ids
    return done


def prefill_and_export(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> list[KvExport]:
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params, hold_kv=True)
    while engine.scheduler.has_work():
        engine.step()
    assert all(engine.requests[f"r{i}"].status is SequenceStatus.PARKED for i in range(len(prompts)))
    exports = [engine.export_kv(f"r{i}") for i in range(len(prompts))]
    for i in range(len(prompts)):
        assert engine.release_kv(f"r{i}")
    assert engine.kv_blocks_used == 0
    engine.check_integrity()
    return exports


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_import_continues_identically(model_dirs: dict[str, Path], dtype: str) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    alone = LLMEngine.from_model(model_dirs["llama"], dtype=dtype)
    for i, p in enumerate(PROMPTS):
        alone.add_request(f"r{i}", p, params)
    expected = run_to_completion(alone)

    prefill = LLMEngine.from_model(model_dirs["llama"], dtype=dtype)
    exports = prefill_and_export(prefill, PROMPTS, params)
    # A different block size on the receiver: exports are contiguous, so that converts.
    decode = LLMEngine.from_model(model_dirs["llama"], dtype=dtype, config=EngineConfig(block_size=8))
    for export in exports:
        decode.import_kv(export, params)
    got = run_to_completion(decode)
    assert got == expected
    assert decode.kv_blocks_used == 0
    decode.check_integrity()


def test_seeded_sampling_survives_transfer(model_dirs: dict[str, Path]) -> None:
    params = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=1234, ignore_eos=True)
    alone = LLMEngine.from_model(model_dirs["qwen2"])
    alone.add_request("r0", PROMPTS[1], params)
    expected = run_to_completion(alone)
    prefill = LLMEngine.from_model(model_dirs["qwen2"])
    (export,) = prefill_and_export(prefill, PROMPTS[1:2], params)
    decode = LLMEngine.from_model(model_dirs["qwen2"])
    decode.import_kv(export, params)
    assert run_to_completion(decode) == expected


def test_import_refuses_mismatched_layout(model_dirs: dict[str, Path]) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0)
    prefill = LLMEngine.from_model(model_dirs["llama"])
    (export,) = prefill_and_export(prefill, PROMPTS[:1], params)
    other_model = LLMEngine.from_model(model_dirs["qwen2"])
    with pytest.raises(KvLayoutMismatchError, match="model_fingerprint"):
        other_model.import_kv(export, params)
    other_dtype = LLMEngine.from_model(model_dirs["llama"], dtype="bfloat16")
    with pytest.raises(KvLayoutMismatchError, match="dtype"):
        other_dtype.import_kv(export, params)
    same = LLMEngine.from_model(model_dirs["llama"])
    export.layers[1] = export.layers[1][:, :-1]
    with pytest.raises(KvLayoutMismatchError, match="layer 1"):
        same.import_kv(export, params)
    assert same.kv_blocks_used == 0 and other_model.kv_blocks_used == 0


def test_import_without_room_raises_capacity_error(model_dirs: dict[str, Path]) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0)
    prefill = LLMEngine.from_model(model_dirs["llama"])
    (export,) = prefill_and_export(prefill, [list(range(3, 140))], params)
    small = LLMEngine.from_model(model_dirs["llama"], config=EngineConfig(num_kv_blocks=12, block_size=16))
    small.import_kv(export, params)  # 9 of the 12 blocks
    with pytest.raises(KvCapacityError):
        small.import_kv(export, params, request_id="again")
    assert small.kv_blocks_used == 9
    small.abort_request(export.request_id)
    assert small.kv_blocks_used == 0
    small.check_integrity()
