"""Random-weight model directories for tests, benchmarks and the built-in default model.

Weights come from a SHAKE-256 byte stream keyed by (seed, tensor name), turned into uniform
floats with exact integer arithmetic and one rounded multiply. torch's CPU normal sampler picks
its kernel by CPU instruction set and may differ in the last bits between machines; this stream
gives bit-identical files on every machine and torch version, so two workers that each build the
same model agree on its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerBase

from pdserve.errors import ModelLoadError
from pdserve.models.byte_tokenizer import EOS_TOKEN, IM_END_TOKEN, build_byte_tokenizer
from pdserve.models.dtype import parse_dtype
from pdserve.models.supported import MODEL_TYPE_OF_ARCHITECTURE, SUPPORTED_ARCHITECTURES

# Far above the usual 0.02: a random model with small weights greedily repeats one token forever,
# which hides bugs in anything that compares generated tokens. At 0.5 prompts to the tiny model
# generate ~50 distinct tokens out of 64, and logits stay within about ±20, where eager and sdpa
# attention in fp32 agree within 1e-4 even at 500-token prompts.
DEFAULT_INIT_STD = 0.5
_MANTISSA_BITS = 24  # integers below 2**24 are exact in float32


def create_random_model(path: str | Path, config: dict[str, Any], *, seed: int = 0, dtype: str = "float32") -> Path:
    """Write a loadable random-weight model of `config` (a Hugging Face config dict) to `path`; return it.

    `config` must name "architectures" (a supported one) and "model_type". Missing vocab_size and
    bos/eos/pad ids are taken from the byte tokenizer (vocab 261; a larger vocab_size is fine, ids past
    the tokenizer decode to ''), a missing initializer_range is DEFAULT_INIT_STD. Writes config.json,
    model.safetensors (weights stored in `dtype`), the tokenizer files and generation_config.json,
    whose eos ids are config's eos_token_id if given, else <|end_of_text|> and <|im_end|>. Existing
    files of those names are overwritten. The same arguments always give byte-identical weights.
    Raises ValueError for a config or dtype it cannot build.
    """
    try:
        torch_dtype = parse_dtype(dtype)
    except ModelLoadError as e:
        raise ValueError(str(e)) from None
    tokenizer = build_byte_tokenizer()
    hf_config = _build_config(config, tokenizer)
    if hf_config.vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {hf_config.vocab_size} is smaller than the byte tokenizer's {len(tokenizer)}")
    eos_ids = config.get("eos_token_id", [tokenizer.convert_tokens_to_ids(t) for t in (EOS_TOKEN, IM_END_TOKEN)])
    tensors = random_weights(hf_config, seed=seed, dtype=torch_dtype)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf_config.dtype = str(torch_dtype).removeprefix("torch.")
    hf_config.save_pretrained(path)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.model_max_length = hf_config.max_position_embeddings
    tokenizer.save_pretrained(path)
    generation = {
        "bos_token_id": hf_config.bos_token_id,
        "eos_token_id": eos_ids,
        "pad_token_id": hf_config.pad_token_id,
    }
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    return path


def random_weights(config: PretrainedConfig, *, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every stored tensor of `config`'s model: norm scales 1, all else uniform with std initializer_range.

    Tied weights appear once, under the name transformers saves them by.
    """
    # On the meta device the model costs no memory and no init time: only names and shapes are needed.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    all_params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    buffers = [name for name in model.state_dict() if name not in all_params]
    if buffers:
        raise ValueError(f"{type(model).__name__} has persistent buffers {buffers}, which this generator does not fill")
    std = float(config.initializer_range)
    tensors = {}
    for name, param in model.named_parameters():  # remove_duplicate: tied weights once
        if "norm" in name:  # RMSNorm scales, Qwen3's q/k norms included
            values = torch.ones(param.shape)
        else:
            values = torch.from_numpy(_uniform(f"{seed}/{name}", param.numel(), std)).reshape(param.shape)
        tensors[name] = values.to(dtype).contiguous()
    return tensors


def _build_config(config: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    architectures = config.get("architectures")
    if (
        not isinstance(architectures, list)
        or len(architectures) != 1
        or architectures[0] not in SUPPORTED_ARCHITECTURES
    ):
        raise ValueError(
            f'config needs "architectures": [one of {sorted(SUPPORTED_ARCHITECTURES)}], got {architectures!r}'
        )
    model_type = MODEL_TYPE_OF_ARCHITECTURE[architectures[0]]
    if config.get("model_type") != model_type:
        raise ValueError(f'config needs "model_type": {model_type!r} for {architectures[0]}')
    fields = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "initializer_range": DEFAULT_INIT_STD,
        **{k: v for k, v in config.items() if k != "model_type"},
    }
    return AutoConfig.for_model(model_type, **fields)


def _uniform(key: str, count: int, std: float) -> np.ndarray:
    """`count` float32 values uniform on [-std*sqrt(3), std*sqrt(3)] (so of std `std`), fixed by `key`."""
    stream = hashlib.shake_256(key.encode()).digest(4 * count)
    ints = (np.frombuffer(stream, dtype="<u4") & (2**_MANTISSA_BITS - 1)).astype(np.float32)
    # 2k - (2^24 - 1) is an exact odd integer in float32, symmetric around 0; one rounded multiply scales it.
    centred = ints * np.float32(2) - np.float32(2**_MANTISSA_BITS - 1)
    return centred * np.float32(std * 3**0.5 / 2**_MANTISSA_BITS)
