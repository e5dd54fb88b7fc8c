"""Dataset lengths, token ranges, shared prefixes and determinism."""

from __future__ import annotations

import math

import pytest
from pdserve.bench.datasets import (
    SHAREGPT_MAX_INPUT,
    SHAREGPT_MAX_TOTAL,
    SHAREGPT_MIN_LEN,
    DatasetSpec,
    as_text,
    make_dataset,
)


def test_random_exact_lengths_without_range_ratio() -> None:
    requests = make_dataset(DatasetSpec("random", num_prompts=10, input_len=64, output_len=16, vocab_size=100))
    assert len(requests) == 10
    for r in requests:
        assert isinstance(r.prompt, list)
        assert (r.prompt_len, len(r.prompt), r.output_len) == (64, 64, 16)
        assert all(0 <= t < 100 for t in r.prompt)


def test_random_range_ratio_bounds() -> None:
    spec = DatasetSpec("random", num_prompts=400, input_len=100, output_len=10, range_ratio=0.25, seed=2)
    requests = make_dataset(spec)
    inputs = {r.prompt_len for r in requests}
    outputs = {r.output_len for r in requests}
    assert min(inputs) >= 75 and max(inputs) <= 125 and len(inputs) > 30
    assert min(outputs) >= math.floor(7.5) and max(outputs) <= math.ceil(12.5)
    # Uniform over the range: both ends are reached with this many draws.
    assert {7, 13} <= outputs


def test_same_seed_same_requests() -> None:
    spec = DatasetSpec("random", num_prompts=5, input_len=32, output_len=4, range_ratio=0.5, seed=9)
    assert make_dataset(spec) == make_dataset(spec)
    other = make_dataset(DatasetSpec("random", num_prompts=5, input_len=32, output_len=4, range_ratio=0.5, seed=10))
    assert make_dataset(spec) != other


def test_sharegpt_mix_stays_in_bounds_and_varies() -> None:
    requests = make_dataset(DatasetSpec("sharegpt", num_prompts=500, seed=1))
    inputs = [r.prompt_len for r in requests]
    outputs = [r.output_len for r in requests]
    assert len(requests) == 500
    assert min(inputs) >= SHAREGPT_MIN_LEN and max(inputs) <= SHAREGPT_MAX_INPUT
    assert min(outputs) >= SHAREGPT_MIN_LEN
    assert max(i + o for i, o in zip(inputs, outputs, strict=True)) <= SHAREGPT_MAX_TOTAL
    assert len(set(inputs)) > 100  # a spread of lengths, not a constant
    fixed = make_dataset(DatasetSpec("sharegpt", num_prompts=20, sharegpt_output_len=7))
    assert {r.output_len for r in fixed} == {7}


def test_prefix_set_shares_prefixes_across_groups() -> None:
    spec = DatasetSpec("prefix", num_prompts=12, input_len=8, output_len=4, prefix_len=32, prefix_groups=3, seed=4)
    requests = make_dataset(spec)
    heads = [tuple(r.prompt[:32]) for r in requests]
    assert len(set(heads)) == 3
    assert sorted(heads.count(h) for h in set(heads)) == [4, 4, 4]
    assert all(r.prompt_len == len(r.prompt) == 40 for r in requests)
    assert len({tuple(r.prompt[32:]) for r in requests}) == 12  # every suffix its own


def test_as_text_counts_tokens_again() -> None:
    from pdserve.models import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    requests = make_dataset(DatasetSpec("random", num_prompts=3, input_len=20, output_len=4, vocab_size=128))
    texts = as_text(requests, tokenizer)
    for before, after in zip(requests, texts, strict=True):
        assert isinstance(after.prompt, str)
        assert after.prompt_len == len(tokenizer.encode(after.prompt, add_special_tokens=False))
        assert after.output_len == before.output_len


def test_as_text_keeps_lengths_with_non_utf8_bytes_and_specials() -> None:
    # The whole byte tokenizer: bytes above 127 decode to U+FFFD (three tokens again), and ids 256+
    # are special tokens. Prompts came back ~85% longer than asked, with `<|im_end|>` in the text.
    from pdserve.models import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    spec = DatasetSpec("random", num_prompts=16, input_len=100, output_len=4, vocab_size=len(tokenizer))
    texts = as_text(make_dataset(spec), tokenizer)
    for req in texts:
        assert isinstance(req.prompt, str)
        assert 95 <= req.prompt_len <= 100
        assert req.prompt_len == len(tokenizer.encode(req.prompt, add_special_tokens=False))
        assert not any(special in req.prompt for special in tokenizer.all_special_tokens)


@pytest.mark.parametrize(
    "spec",
    [
        DatasetSpec("nope"),
        DatasetSpec(num_prompts=0),
        DatasetSpec(range_ratio=1.0),
        DatasetSpec(vocab_size=1),
        DatasetSpec("prefix", prefix_groups=0),
    ],
)
def test_bad_specs_are_refused(spec: DatasetSpec) -> None:
    with pytest.raises(ValueError):
        make_dataset(spec)
