"""Prompt logprobs (SamplingParams.prompt_logprobs) against Hugging Face's forward pass."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from hf_reference import load_hf
from pdserve import LLM, SamplingParams
from pdserve.errors import InvalidRequestError


@torch.inference_mode()
def hf_prompt_scores(model_dir: Path, prompt: list[int], k: int) -> tuple[list[float], list[list[int]], list[int]]:
    """Logprob of prompt token i + 1 after tokens 0..i, the k best ids there, and its rank (how
    many tokens are at least as likely, itself included), for every i."""
    logits = load_hf(model_dir)(torch.tensor([prompt])).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logprobs.gather(1, torch.tensor(prompt[1:]).unsqueeze(1))
    ranks = (logprobs >= chosen).sum(dim=-1).tolist()
    return chosen.squeeze(1).tolist(), torch.topk(logprobs, k, dim=-1).indices.tolist(), ranks


def prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(5)
    return [[rng.randrange(vocab) for _ in range(n)] for n in (1, 2, 37, 300)]


@pytest.mark.parametrize("chunk", [2048, 64])  # whole prompts, and prompts prefilled in chunks of 64
def test_prompt_logprobs_match_hf(model_dirs: dict[str, Path], chunk: int) -> None:
    llm = LLM(model_dirs["llama"], dtype="float32", max_num_batched_tokens=chunk)
    batch = prompts(llm.engine.loaded.vocab_size)
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True, prompt_logprobs=4)
    outputs = llm.generate(batch, params)
    for prompt, out in zip(batch, outputs, strict=True):
        assert out.prompt_logprobs is not None and out.prompt_top_logprobs is not None
        assert len(out.prompt_logprobs) == len(out.prompt_top_logprobs) == len(prompt)
        assert out.prompt_logprobs[0] is None and out.prompt_top_logprobs[0] is None
        if len(prompt) == 1:
            continue
        chosen, best, ranks = hf_prompt_scores(model_dirs["llama"], prompt, 4)
        assert out.prompt_logprobs[1:] == pytest.approx(chosen, abs=5e-4)
        assert out.prompt_ranks is not None and out.prompt_ranks[0] is None
        # Ranks agree but where a neighbour is within float noise of the prompt token.
        close = sum(abs(ours - theirs) <= 1 for ours, theirs in zip(out.prompt_ranks[1:], ranks, strict=True))
        assert (
            close == len(ranks)
            and sum(o == t for o, t in zip(out.prompt_ranks[1:], ranks, strict=True)) >= len(ranks) - 2
        )
        tops = out.prompt_top_logprobs[1:]
        assert all(top is not None and len(top) == 4 for top in tops)
        # The best alternative agrees wherever it is not a near-tie.
        agree = sum(next(iter(top or {})) == ids[0] for top, ids in zip(tops, best, strict=True))
        assert agree >= len(tops) - 2
    assert llm.engine.kv_blocks_used == 0


def test_cached_prefix_is_scored_all_the_same(model_dirs: dict[str, Path]) -> None:
    """A prompt whose blocks are in the prefix cache is run through the model again when it asks
    for prompt logprobs: cached tokens would have none."""
    llm = LLM(model_dirs["llama"], dtype="float32")
    prompt = list(range(5, 105))
    plain = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    assert llm.generate([prompt], plain)[0].num_cached_tokens == 0
    assert llm.generate([prompt], plain)[0].num_cached_tokens > 0  # the cache holds it now
    scored = llm.generate([prompt], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True, prompt_logprobs=0))
    out = scored[0]
    assert out.num_cached_tokens == 0
    assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == 100
    assert out.prompt_top_logprobs is None  # k = 0: the prompt tokens' own logprobs only
    chosen, _, _ = hf_prompt_scores(model_dirs["llama"], prompt, 1)
    assert out.prompt_logprobs[1:] == pytest.approx(chosen, abs=5e-4)


def test_only_the_first_and_last_outputs_carry_them(model_dirs: dict[str, Path]) -> None:
    llm = LLM(model_dirs["llama"], dtype="float32")
    engine = llm.engine
    engine.add_request("r", list(range(3, 40)), SamplingParams(max_tokens=4, ignore_eos=True, prompt_logprobs=1))
    carried = []
    while engine.has_unfinished():
        for out in engine.step():
            carried.append(out.prompt_logprobs is not None)
    assert carried == [True, False, False, True]


@pytest.mark.parametrize("value", [-1, 21, True, 1.5, "2"])
def test_bad_prompt_logprobs(value: object) -> None:
    with pytest.raises(InvalidRequestError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lengths", "max_tokens"),
    [
        ((3, 500, 17, 64, 130, 7, 255, 41), 20),  # preempted while decoding, prompts already scored
        ((40, 40, 40, 40, 40, 40, 500), 60),  # the long prompt preempted part way through its scoring
    ],
)
def test_preempted_requests_score_each_prompt_token_once(
    model_dirs: dict[str, Path], lengths: tuple[int, ...], max_tokens: int
) -> None:
    """Recomputed after a preemption, a request does not score its prompt twice (or skip any)."""
    rng = random.Random(8)
    batch = [[rng.randrange(256) for _ in range(n)] for n in lengths]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, prompt_logprobs=2)
    roomy = LLM(model_dirs["llama"], dtype="float32").generate(batch, params)
    # 40 blocks of 16 tokens cannot hold them all at once; chunks of 64 tokens spread prefills over steps.
    tight = LLM(model_dirs["llama"], dtype="float32", num_kv_blocks=40, max_num_batched_tokens=64)
    squeezed = tight.generate(batch, params)
    assert tight.engine.scheduler.num_preemptions > 0
    for prompt, want, got in zip(batch, roomy, squeezed, strict=True):
        assert got.prompt_logprobs is not None and want.prompt_logprobs is not None
        assert got.prompt_top_logprobs is not None and len(got.prompt_top_logprobs) == len(prompt)
        assert len(got.prompt_logprobs) == len(prompt)
        assert got.prompt_logprobs[1:] == pytest.approx(want.prompt_logprobs[1:], abs=5e-4)
