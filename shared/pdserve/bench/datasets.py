"""Benchmark workloads. Every dataset is a seeded list of prompts (token ids) with output lengths.

Prompts are random token ids: what a serving engine's speed depends on is how many tokens it
prefills and decodes, and which of them it has seen before (the shared-prefix set), not what the
tokens say. `as_text` turns them into text for endpoints that only take text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DATASET_NAMES = ("random", "sharegpt", "prefix")

# The synthetic ShareGPT mix: log-normal lengths whose medians and spreads resemble the
# conversation lengths commonly reported for ShareGPT, cut to the same bounds that vLLM's
# ShareGPT loader applies (both lengths at least 4, prompt at most 1024, total at most 2048).
SHAREGPT_INPUT_MEDIAN = 110
SHAREGPT_INPUT_SIGMA = 1.1
SHAREGPT_OUTPUT_MEDIAN = 190
SHAREGPT_OUTPUT_SIGMA = 0.9
SHAREGPT_MIN_LEN = 4
SHAREGPT_MAX_INPUT = 1024
SHAREGPT_MAX_TOTAL = 2048


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request to send: `prompt` is token ids or text, lengths are in tokens."""

    prompt: list[int] | str
    prompt_len: int
    output_len: int


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """What `make_dataset` builds. Lengths are tokens; `range_ratio` r draws uniformly from
    [floor(len * (1 - r)), ceil(len * (1 + r))], as vLLM's random dataset does."""

    name: str = "random"
    num_prompts: int = 100
    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0
    vocab_size: int = 256
    prefix_len: int = 256
    prefix_groups: int = 4
    sharegpt_output_len: int | None = None
    seed: int = 0


def make_dataset(spec: DatasetSpec) -> list[BenchRequest]:
    """The requests of `spec`, the same for the same spec on every machine."""
    if spec.name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {spec.name!r}; expected one of {', '.join(DATASET_NAMES)}")
    if spec.num_prompts < 1:
        raise ValueError(f"num_prompts must be at least 1, got {spec.num_prompts}")
    if not 0.0 <= spec.range_ratio < 1.0:
        raise ValueError(f"range_ratio must be in [0, 1), got {spec.range_ratio}")
    if spec.vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2, got {spec.vocab_size}")
    rng = np.random.default_rng(spec.seed)
    if spec.name == "random":
        return _random(spec, rng)
    if spec.name == "sharegpt":
        return _sharegpt(spec, rng)
    return _prefix(spec, rng)


def sample_lengths(rng: np.random.Generator, length: int, range_ratio: float, count: int) -> np.ndarray:
    """`count` integer lengths, uniform over [floor(length*(1-r)), ceil(length*(1+r))], at least 1."""
    low = max(math.floor(length * (1 - range_ratio)), 1)
    high = max(math.ceil(length * (1 + range_ratio)), low)
    return rng.integers(low, high + 1, size=count)


def _tokens(rng: np.random.Generator, count: int, vocab_size: int) -> list[int]:
    return [int(t) for t in rng.integers(0, vocab_size, size=count)]


def _random(spec: DatasetSpec, rng: np.random.Generator) -> list[BenchRequest]:
    inputs = sample_lengths(rng, spec.input_len, spec.range_ratio, spec.num_prompts)
    outputs = sample_lengths(rng, spec.output_len, spec.range_ratio, spec.num_prompts)
    return [
        BenchRequest(_tokens(rng, int(n_in), spec.vocab_size), int(n_in), int(n_out))
        for n_in, n_out in zip(inputs, outputs, strict=True)
    ]


def _sharegpt(spec: DatasetSpec, rng: np.random.Generator) -> list[BenchRequest]:
    requests: list[BenchRequest] = []
    while len(requests) < spec.num_prompts:
        n_in = round(rng.lognormal(math.log(SHAREGPT_INPUT_MEDIAN), SHAREGPT_INPUT_SIGMA))
        n_out = round(rng.lognormal(math.log(SHAREGPT_OUTPUT_MEDIAN), SHAREGPT_OUTPUT_SIGMA))
        if spec.sharegpt_output_len is not None:
            n_out = spec.sharegpt_output_len
        # Rejection rather than clipping, so the bounds do not pile lengths up at the edges.
        if n_in < SHAREGPT_MIN_LEN or n_out < SHAREGPT_MIN_LEN:
            continue
        if n_in > SHAREGPT_MAX_INPUT or n_in + n_out > SHAREGPT_MAX_TOTAL:
            continue
        requests.append(BenchRequest(_tokens(rng, n_in, spec.vocab_size), n_in, n_out))
    return requests


def _prefix(spec: DatasetSpec, rng: np.random.Generator) -> list[BenchRequest]:
    """`prefix_groups` shared prefixes of `prefix_len` tokens, each request one of them plus its
    own random suffix of about `input_len` tokens; requests of all groups interleave."""
    if spec.prefix_groups < 1:
        raise ValueError(f"prefix_groups must be at least 1, got {spec.prefix_groups}")
    prefixes = [_tokens(rng, spec.prefix_len, spec.vocab_size) for _ in range(spec.prefix_groups)]
    suffixes = sample_lengths(rng, spec.input_len, spec.range_ratio, spec.num_prompts)
    outputs = sample_lengths(rng, spec.output_len, spec.range_ratio, spec.num_prompts)
    groups = rng.permutation(np.arange(spec.num_prompts) % spec.prefix_groups)
    requests = []
    for group, n_suffix, n_out in zip(groups, suffixes, outputs, strict=True):
        prompt = prefixes[int(group)] + _tokens(rng, int(n_suffix), spec.vocab_size)
        requests.append(BenchRequest(prompt, len(prompt), int(n_out)))
    return requests


MAX_TRIMS = 64  # text-length fixes per prompt; each drops one token from the end


def as_text(requests: list[BenchRequest], tokenizer: Any) -> list[BenchRequest]:
    """The same requests with text prompts, as close to their token lengths as the tokenizer allows.

    Decode then encode need not give back the tokens it started from: a byte-level tokenizer's
    random bytes above 127 are no UTF-8 and decode to U+FFFD, which encodes as three tokens, so a
    random prompt came back about 85% longer than asked. So special tokens are replaced first (a
    random `<|im_end|>` in the text would be read as a real one), and the text is re-encoded, cut
    to the asked length and decoded again until its encoding is at most that long. The length
    recorded is the final text's own count."""
    special = set(getattr(tokenizer, "all_special_ids", ()))
    vocab = len(tokenizer)
    converted = []
    for req in requests:
        assert isinstance(req.prompt, list)
        ids = [_not_special(t, special, vocab) for t in req.prompt]
        text, length = _text_of_length(tokenizer, ids, req.prompt_len)
        converted.append(BenchRequest(text, length, req.output_len))
    return converted


def _not_special(token_id: int, special: set[int], vocab: int) -> int:
    for step in range(vocab):
        candidate = (token_id + step) % vocab
        if candidate not in special:
            return candidate
    return token_id  # a vocabulary of special tokens only: nothing to choose from


def _text_of_length(tokenizer: Any, ids: list[int], target: int) -> tuple[str, int]:
    text = tokenizer.decode(ids)
    encoded = tokenizer.encode(text, add_special_tokens=False)
    cut = target
    for _ in range(MAX_TRIMS):
        if len(encoded) <= target or cut <= 1:
            break
        text = tokenizer.decode(encoded[:cut])
        encoded = tokenizer.encode(text, add_special_tokens=False)
        cut -= 1 if len(encoded) > target else 0
    return text, len(encoded)
