"""Greedy tokens from LLM.generate equal Hugging Face generate(), position by position."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from hf_reference import Reference, assert_matches, hf_greedy, load_hf
from pdserve import LLM, SamplingParams

MAX_NEW = 20
PROMPT_LENGTHS = [3, 500, 17, 64, 130, 7, 255, 41]


def make_prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


def shared_prefix_prompts(vocab: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(vocab) for _ in range(200)]
    return [prefix + [rng.randrange(vocab) for _ in range(n)] for n in (1, 5, 16, 33, 60, 2, 100, 9)]


_reference_cache: dict[tuple[str, tuple[int, ...]], Reference] = {}


def references(model_dir: Path, prompts: list[list[int]]) -> list[Reference]:
    missing = [p for p in prompts if (str(model_dir), tuple(p)) not in _reference_cache]
    if missing:
        hf = load_hf(model_dir)
        for p in missing:
            _reference_cache[(str(model_dir), tuple(p))] = hf_greedy(hf, p, MAX_NEW)
    return [_reference_cache[(str(model_dir), tuple(p))] for p in prompts]


def run_and_compare(llm: LLM, model_dir: Path, prompts: list[list[int]], label: str) -> None:
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
    outputs = llm.generate(prompts, params)
    compared = 0
    for i, (out, ref) in enumerate(zip(outputs, references(model_dir, prompts), strict=True)):
        assert out.finish_reason == "length"
        compared += assert_matches(out.token_ids, ref, f"{label} prompt {i} (len {len(prompts[i])})")
    # A comparison that stops at position 0 everywhere would prove nothing.
    assert compared >= len(prompts) * MAX_NEW // 2, f"{label}: only {compared} positions compared"
    assert llm.engine.kv_blocks_used == 0
    llm.engine.check_integrity()


ARCHS = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma", "granite", "olmo2", "stablelm"]


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_matches_hf(model_dirs: dict[str, Path], arch: str) -> None:
    llm = LLM(model_dirs[arch], dtype="float32")
    prompts = make_prompts(llm.engine.loaded.vocab_size, PROMPT_LENGTHS)
    run_and_compare(llm, model_dirs[arch], prompts, arch)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prefix_cache_hits_match_hf(model_dirs: dict[str, Path], arch: str) -> None:
    llm = LLM(model_dirs[arch], dtype="float32")
    prompts = shared_prefix_prompts(llm.engine.loaded.vocab_size)
    run_and_compare(llm, model_dirs[arch], prompts[:1], f"{arch} warm-up")
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
    run_and_compare(llm, model_dirs[arch], prompts, f"{arch} cached")
    outputs = llm.generate(prompts, params)
    assert all(out.num_cached_tokens >= 192 for out in outputs), [o.num_cached_tokens for o in outputs]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_chunked_prefill_matches_hf(model_dirs: dict[str, Path], arch: str) -> None:
    llm = LLM(model_dirs[arch], dtype="float32", max_num_batched_tokens=48)
    prompts = make_prompts(llm.engine.loaded.vocab_size, PROMPT_LENGTHS)
    run_and_compare(llm, model_dirs[arch], prompts, f"{arch} chunked")


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_preemption_matches_hf(model_dirs: dict[str, Path], arch: str) -> None:
    # 40 blocks of 16 tokens cannot hold all eight requests at once (about 75 blocks).
    llm = LLM(model_dirs[arch], dtype="float32", num_kv_blocks=40, block_size=16)
    prompts = make_prompts(llm.engine.loaded.vocab_size, PROMPT_LENGTHS)
    run_and_compare(llm, model_dirs[arch], prompts, f"{arch} preempted")
    assert llm.engine.scheduler.num_preemptions > 0


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma", "granite", "olmo2", "stablelm"])
def test_logprobs_match_hf_distribution(model_dirs: dict[str, Path], arch: str) -> None:
    """The distribution sampled from is the model's own, whatever its CausalLM head does to the
    logits (Granite divides them by logits_scaling): logprobs equal HF's log-softmax."""
    llm = LLM(model_dirs[arch], dtype="float32")
    prompt = make_prompts(llm.engine.loaded.vocab_size, [20])[0]
    out = llm.generate([prompt], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=True))[0]
    hf = load_hf(model_dirs[arch])
    with torch.inference_mode():
        logits = hf(torch.tensor([prompt + out.token_ids[:-1]])).logits[0, len(prompt) - 1 :].float()
    expected = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(out.token_ids).unsqueeze(1)).squeeze(1)
    assert out.logprobs == pytest.approx(expected.tolist(), abs=1e-4)
