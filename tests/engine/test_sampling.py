"""Sampling: seeds, top-k/top-p, stop conditions, logprobs, aborts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from pdserve import LLM, SamplingParams
from pdserve.engine.sampler import warp_logits
from pdserve.errors import InvalidRequestError

PROMPT = [10, 20, 30, 40, 50, 60, 70]


@pytest.fixture(scope="module")
def llm(model_dirs: dict[str, Path]) -> LLM:
    return LLM(model_dirs["llama"])


def test_seed_gives_same_output_whatever_the_batch(llm: LLM) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=42, ignore_eos=True)
    alone = llm.generate([PROMPT], params)[0].token_ids
    others = SamplingParams(max_tokens=9, temperature=1.3, ignore_eos=True)
    batch = llm.generate([[1, 2, 3], PROMPT, list(range(50, 90))], [others, params, others])
    assert batch[1].token_ids == alone
    different = llm.generate([PROMPT], SamplingParams(max_tokens=16, temperature=1.0, seed=43, ignore_eos=True))
    assert different[0].token_ids != alone


def test_top_k_one_is_greedy(llm: LLM) -> None:
    greedy = llm.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))[0]
    topk = llm.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0.7, top_k=1, ignore_eos=True))[0]
    tiny_p = llm.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0.7, top_p=1e-6, ignore_eos=True))[0]
    # min_p 1 keeps only tokens as likely as the likeliest
    full_min_p = llm.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0.7, min_p=1.0, ignore_eos=True))[0]
    assert topk.token_ids == greedy.token_ids == tiny_p.token_ids == full_min_p.token_ids


@pytest.mark.parametrize("min_p", [0.0, 0.3])
def test_min_p_bounds_every_sampled_token(llm: LLM, min_p: float) -> None:
    """Under min_p m at temperature T a token is kept only if p_T(token) >= m * p_T(likeliest),
    that is raw logprob(token) - raw logprob(likeliest) >= T * ln(m); logprobs (raw, with the
    likeliest as top alternative) show it for every sampled token. Without min_p, a hot random
    model breaks that bound often, so the test can tell the two apart."""
    temperature = 2.0
    params = SamplingParams(
        max_tokens=64, temperature=temperature, min_p=min_p, seed=11, top_logprobs=1, ignore_eos=True
    )
    out = llm.generate([PROMPT, list(range(3, 40))], params)
    bound = temperature * math.log(0.3)
    gaps = [
        chosen - max(top.values())
        for o in out
        for chosen, top in zip(o.logprobs or [], o.top_logprobs or [], strict=True)
    ]
    assert len(gaps) == 128
    below = sum(gap < bound - 1e-4 for gap in gaps)
    if min_p:
        assert below == 0, f"{below} sampled tokens under min_p's bound"
    else:
        assert below > 5, "a hot random model should often sample below the bound; the test would not tell"


@pytest.mark.parametrize(
    ("top_k", "top_p", "min_p"),
    [(0, 1.0, 0.05), (0, 0.9, 0.0), (50, 1.0, 0.0), (40, 0.8, 0.1), (0, 0.5, 0.5), (5, 0.99, 0.01), (0, 1.0, 1.0)],
)
def test_warp_logits_keeps_what_hugging_face_keeps(top_k: int, top_p: float, min_p: float) -> None:
    """The same tokens survive top-k, top-p and min-p as under transformers' own warpers, chained
    in the order generate() chains them."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList()
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    if min_p:
        warpers.append(MinPLogitsWarper(min_p))
    generator = torch.Generator().manual_seed(top_k * 1000 + int(top_p * 100) + int(min_p * 10))
    for scale in (0.5, 2.0, 6.0):  # flat to peaked distributions
        logits = torch.randn(1, 2048, generator=generator, dtype=torch.float64) * scale
        want = torch.isfinite(warpers(torch.zeros(1, 1, dtype=torch.long), logits.clone()))[0]
        got = torch.isfinite(warp_logits(logits[0].clone(), top_k, top_p, min_p))
        assert torch.equal(got, want), f"scale {scale}: {int(got.sum())} kept, Hugging Face keeps {int(want.sum())}"
        assert 1 <= int(got.sum()) < 2048 or (top_k, top_p, min_p) == (0, 1.0, 0.0)


def test_max_tokens_and_stop_token_ids(llm: LLM) -> None:
    out = llm.generate([PROMPT], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"
    stop_at = out.token_ids[2]
    first = out.token_ids.index(stop_at)
    stopped = llm.generate([PROMPT], SamplingParams(max_tokens=5, temperature=0.0, stop_token_ids=[stop_at]))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == out.token_ids[: first + 1]


def test_eos_stops_unless_ignored(llm: LLM) -> None:
    eos = llm.engine.loaded.eos_token_ids[0]
    # Prompting with an eos-free prompt and declaring a likely token as eos is not possible
    # without changing the model, so check the engine's rule directly on its stop checker.
    out = llm.generate([PROMPT], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))[0]
    assert out.finish_reason == "length"
    assert eos in llm.engine.stop_checker.eos_token_ids


def test_stop_string_cuts_text(llm: LLM) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    full = llm.generate(["Hello there"], params)[0]
    text = full.text
    assert len(text) >= 6, f"need printable output to test stop strings, got {text!r}"
    stop = text[3:5]
    position = text.find(stop)
    cut = llm.generate(["Hello there"], SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop]))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == text[:position]
    kept = llm.generate(
        ["Hello there"],
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop], include_stop_str_in_output=True),
    )[0]
    assert kept.text == text[: position + len(stop)]


def test_logprobs_of_chosen_tokens(llm: LLM) -> None:
    out = llm.generate([PROMPT], SamplingParams(max_tokens=6, temperature=0.0, logprobs=True, ignore_eos=True))[0]
    assert out.logprobs is not None and len(out.logprobs) == 6
    assert all(lp <= 0.0 and math.isfinite(lp) for lp in out.logprobs)
    sampled = llm.generate([PROMPT], SamplingParams(max_tokens=6, seed=3, logprobs=True, ignore_eos=True))[0]
    assert sampled.logprobs is not None and len(sampled.logprobs) == 6
    # vLLM's spelling: a count of top alternatives (0: none, the chosen token's logprob only), None for none.
    for count in (0, 1):
        again = llm.generate([PROMPT], SamplingParams(max_tokens=6, temperature=0.0, logprobs=count, ignore_eos=True))
        assert again[0].logprobs == out.logprobs
    none = llm.generate([PROMPT], SamplingParams(max_tokens=6, temperature=0.0, logprobs=None, ignore_eos=True))[0]
    assert none.logprobs is None and none.token_ids == out.token_ids


def test_vllm_spellings_of_none(llm: LLM) -> None:
    """vLLM's SamplingParams takes None for "no limit" and "no stop conditions"; so does ours."""
    params = SamplingParams(max_tokens=None, stop=None, stop_token_ids=None, temperature=0.0, ignore_eos=True)
    assert params.stop == [] and params.stop_token_ids == []
    prompt = list(range(3, 23))
    out = llm.generate([prompt], params)[0]
    # Until the context ends: the prompt plus the output fill max_model_len exactly.
    assert out.finish_reason == "length"
    assert len(prompt) + len(out.token_ids) == llm.engine.max_model_len
    # vLLM's output shape reads the same completion.
    assert [(o.text, o.token_ids, o.finish_reason) for o in out.outputs] == [(out.text, out.token_ids, "length")]


def test_abort_frees_blocks_at_any_point(llm: LLM) -> None:
    engine = llm.engine
    params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)
    engine.add_request("waiting", list(range(3, 100)), params)
    engine.add_request("running", list(range(3, 60)), params)
    engine.step()
    assert engine.kv_blocks_used > 0
    engine.step()
    assert engine.abort_request("running")
    assert engine.abort_request("waiting")
    assert not engine.abort_request("unknown")
    outs = engine.step()
    assert {o.request_id for o in outs if o.finish_reason == "abort"} == {"waiting", "running"}
    assert engine.kv_blocks_used == 0
    engine.check_integrity()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=4, temperature=1e-45, ignore_eos=True),
        SamplingParams(max_tokens=4, temperature=1.0, top_p=5e-324, ignore_eos=True),
        SamplingParams(max_tokens=4, temperature=1e-4, top_p=1e-300, seed=3, ignore_eos=True),
    ],
    ids=["tiny-temperature", "tiny-top-p", "both"],
)
def test_extreme_sampling_values_pick_the_top_token(params: SamplingParams) -> None:
    """Values that overflow float32 sampling give the most likely token, never a failed step."""
    llm = LLM(dtype="float32")
    greedy = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    other = llm.generate([[5, 6, 7], [9, 10]], [params, SamplingParams(max_tokens=4, ignore_eos=True)])
    assert other[0].token_ids == greedy[0].token_ids
    assert other[0].finish_reason == "length" and other[1].finish_reason == "length"


def test_n_completions_per_prompt(llm: LLM) -> None:
    """vLLM's `n`: the prompt's completions in `outputs`, choice i sampled with seed + i."""
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=40, ignore_eos=True, n=3)
    out, other = llm.generate([PROMPT, [1, 2, 3]], params)
    assert [o.index for o in out.outputs] == [0, 1, 2] and len(other.outputs) == 3
    singles = [
        llm.generate([PROMPT], SamplingParams(max_tokens=8, temperature=1.0, seed=40 + i, ignore_eos=True))[0]
        for i in range(3)
    ]
    assert [o.token_ids for o in out.outputs] == [s.token_ids for s in singles]
    assert out.token_ids == out.outputs[0].token_ids and out.text == out.outputs[0].text
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1  # different seeds, different samples
    assert llm.engine.kv_blocks_used == 0
    with pytest.raises(InvalidRequestError, match="n must be"):
        SamplingParams(n=0)


def test_grouped_outputs_compare_and_print(llm: LLM) -> None:
    """A grouped output holds itself among its choices: comparing or printing it must not recurse."""
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True, n=2)
    first, second = llm.generate([PROMPT], params)[0], llm.generate([PROMPT], params)[0]
    assert first != second  # different request ids; the comparison itself must terminate
    assert first == first and "choices" not in repr(first)
    assert [o.token_ids for o in first.outputs] == [o.token_ids for o in second.outputs]


def test_skip_special_tokens(llm: LLM) -> None:
    """vLLM's skip_special_tokens: special tokens (here <|pad|>, forced by a bias) leave the text by
    default and stay in it with False, where stop strings can match them too."""
    pad = llm.tokenizer.convert_tokens_to_ids("<|pad|>")
    assert pad in llm.tokenizer.all_special_ids
    forced = {"max_tokens": 3, "temperature": 0.0, "ignore_eos": True, "logit_bias": {pad: 100.0}}
    skipped = llm.generate([PROMPT], SamplingParams(**forced))[0]
    kept = llm.generate([PROMPT], SamplingParams(**forced, skip_special_tokens=False))[0]
    assert skipped.token_ids == kept.token_ids == [pad] * 3
    assert skipped.text == "" and kept.text == "<|pad|>" * 3
    stopped = llm.generate([PROMPT], SamplingParams(**forced, skip_special_tokens=False, stop=["|><|"]))[0]
    assert stopped.finish_reason == "stop" and stopped.text == "<|pad" and len(stopped.token_ids) == 2
    with pytest.raises(InvalidRequestError, match="skip_special_tokens"):
        SamplingParams(skip_special_tokens=None)  # type: ignore[arg-type]


def test_allowed_token_ids(llm: LLM, model_dirs: dict[str, Path]) -> None:
    """vLLM's allowed_token_ids: greedy picks the likeliest of them (as Hugging Face's model ranks
    them), sampling never leaves them, and logprobs stay those of the raw distribution."""
    from hf_reference import load_hf

    allowed = [5, 9, 77, 130]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, allowed_token_ids=allowed, logprobs=True)
    out = llm.generate([PROMPT], params)[0]
    assert set(out.token_ids) <= set(allowed)
    with torch.inference_mode():
        logits = load_hf(model_dirs["llama"])(torch.tensor([PROMPT])).logits[0, -1]
    assert out.token_ids[0] == max(allowed, key=lambda t: float(logits[t]))
    raw = float(torch.log_softmax(logits.float(), -1)[out.token_ids[0]])
    assert out.logprobs is not None and out.logprobs[0] == pytest.approx(raw, abs=1e-3)
    sampled = SamplingParams(max_tokens=40, temperature=1.5, seed=2, ignore_eos=True, allowed_token_ids=allowed)
    assert set(llm.generate([PROMPT, [1, 2, 3]], sampled)[1].token_ids) <= set(allowed)
    for bad in ([], [-1], [1.5], "5"):
        with pytest.raises(InvalidRequestError, match="allowed_token_ids"):
            SamplingParams(allowed_token_ids=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="allowed_token_ids: token id 99999999 is outside"):
        llm.generate([PROMPT], SamplingParams(allowed_token_ids=[1, 99999999]))


def test_the_stop_token_is_left_out_of_the_text(llm: LLM) -> None:
    """As in vLLM: eos or a stop token id ends the sequence and stays in token_ids, but its text
    is not part of the output, unless include_stop_str_in_output."""
    base: dict[str, Any] = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    full = llm.generate([PROMPT], SamplingParams(**base))[0]
    stop_at = full.token_ids[3]
    first = full.token_ids.index(stop_at)
    before = llm.tokenizer.decode(full.token_ids[:first])
    stopped = llm.generate([PROMPT], SamplingParams(**base, stop_token_ids=[stop_at]))[0]
    assert stopped.token_ids == full.token_ids[: first + 1] and stopped.text == before
    kept = SamplingParams(**base, stop_token_ids=[stop_at], include_stop_str_in_output=True)
    assert llm.generate([PROMPT], kept)[0].text == llm.tokenizer.decode(full.token_ids[: first + 1])
    # eos with special tokens kept: the forced eos is in token_ids only.
    eos = llm.engine.loaded.eos_token_ids[0]
    forced = SamplingParams(max_tokens=4, temperature=0.0, logit_bias={eos: 100.0}, skip_special_tokens=False)
    out = llm.generate([PROMPT], forced)[0]
    assert out.token_ids == [eos] and out.text == "" and out.finish_reason == "stop"


def test_truncate_prompt_tokens(llm: LLM) -> None:
    """vLLM's truncate_prompt_tokens: only the prompt's last k tokens are served, so even a prompt
    longer than the context fits."""
    base: dict[str, Any] = {"max_tokens": 5, "temperature": 0.0, "ignore_eos": True}
    cut = llm.generate([PROMPT], SamplingParams(**base, truncate_prompt_tokens=3))[0]
    assert cut.prompt_token_ids == PROMPT[-3:]
    assert cut.token_ids == llm.generate([PROMPT[-3:]], SamplingParams(**base))[0].token_ids
    too_long = [3 + i % 200 for i in range(llm.engine.max_model_len + 10)]
    kept = llm.generate([too_long], SamplingParams(**base, truncate_prompt_tokens=16))[0]
    assert kept.prompt_token_ids == too_long[-16:]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidRequestError, match="truncate_prompt_tokens"):
            SamplingParams(truncate_prompt_tokens=bad)  # type: ignore[arg-type]
