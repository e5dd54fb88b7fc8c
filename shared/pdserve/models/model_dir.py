"""Checking a local model directory before any weights are read.

Every check raises ModelLoadError naming the problem and what to do, so that a bad path or an
unsupported checkpoint fails in milliseconds with a clear message instead of deep inside
transformers after minutes of loading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pdserve.errors import ModelLoadError
from pdserve.models.json_file import read_json_object
from pdserve.models.supported import MODEL_TYPE_OF_ARCHITECTURE, SUPPORTED_ARCHITECTURES

SINGLE_WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_model_dir(path: Path) -> dict[str, Any]:
    """Validate `path` as a servable Hugging Face model directory and return its parsed config.json.

    Checks, in order: the directory exists; config.json exists and is a JSON object; its
    architectures are all supported and agree with model_type; safetensors weights are present;
    tokenizer files are present. Reads no weights.
    """
    if not path.exists():
        raise ModelLoadError(
            f"model directory {path} does not exist: pass a local Hugging Face model directory "
            "(config.json, *.safetensors, tokenizer files); pdserve never downloads models, so fetch "
            "a hub model first, e.g. `huggingface-cli download ORG/NAME --local-dir DIR`"
        )
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is not a directory: pass the folder that holds config.json")
    config = read_config(path)
    _check_architecture(path, config)
    weight_files(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"no tokenizer in {path}: expected {' or '.join(TOKENIZER_FILES)}; copy the tokenizer files "
            "from the original model repository"
        )
    return config


def read_config(path: Path) -> dict[str, Any]:
    """Parse `path`/config.json into a dict; ModelLoadError if missing, unreadable or not a JSON object."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"no config.json in {path}: this is not a Hugging Face model directory "
            "(expected config.json, *.safetensors and tokenizer files)"
        )
    return read_json_object(config_file, f"config.json in {path}", "fix or re-download it")


def _check_architecture(path: Path, config: dict[str, Any]) -> None:
    supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures:
        raise ModelLoadError(
            f'config.json in {path} names no architectures: add e.g. "architectures": '
            f'["LlamaForCausalLM"]; supported architectures: {supported}'
        )
    for arch in architectures:
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelLoadError(
                f"architecture {arch!r} in {path} is not supported; supported architectures: {supported}"
            )
    expected = MODEL_TYPE_OF_ARCHITECTURE[architectures[0]]
    if config.get("model_type") != expected:
        raise ModelLoadError(
            f"config.json in {path} says architecture {architectures[0]} but model_type "
            f"{config.get('model_type')!r}; transformers picks the model class by model_type, "
            f"so set it to {expected!r}"
        )


def weight_files(path: Path) -> list[Path]:
    """The safetensors files transformers will load from `path`, sorted; ModelLoadError if there are none.

    A sharded checkpoint lists its shards in model.safetensors.index.json; otherwise the weights
    are model.safetensors. Other *.safetensors files (e.g. consolidated.safetensors) are not loaded.
    """
    index_file = path / WEIGHTS_INDEX_FILE
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({path / str(name) for name in weight_map.values()})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{index_file} is not a valid safetensors index ({e}): re-download it") from e
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise ModelLoadError(f"{index_file} lists shards missing from {path}: {', '.join(missing)}")
        return shards
    if (path / SINGLE_WEIGHTS_FILE).is_file():
        return [path / SINGLE_WEIGHTS_FILE]
    hint = ""
    if any(path.glob("pytorch_model*.bin")):
        hint = (
            " pytorch_model*.bin is present but is not loaded: pickle files can execute code when read, "
            "so pdserve loads only safetensors; convert the checkpoint to safetensors."
        )
    elif others := sorted(p.name for p in path.glob("*.safetensors")):
        hint = f" Found {', '.join(others)}, but transformers loads only these two."
    raise ModelLoadError(
        f"no safetensors weights in {path}: expected {SINGLE_WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}.{hint}"
    )
