"""Every bad model directory fails before weights load, with ModelLoadError saying what and what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from pdserve.errors import ModelLoadError
from pdserve.models import load_model


@pytest.fixture
def model_copy(model_dirs, tmp_path: Path) -> Path:
    """A private copy of the built-in model that a test may break."""
    return Path(shutil.copytree(model_dirs["llama"], tmp_path / "model"))


def _edit_config(path: Path, **changes: object) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"does not exist.*never downloads"):
        load_model(tmp_path / "nope")


def test_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match=r"not a directory"):
        load_model(tmp_path / "file")


def test_no_config(model_copy: Path) -> None:
    (model_copy / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(model_copy)


def test_config_not_json(model_copy: Path) -> None:
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"not valid JSON"):
        load_model(model_copy)


def test_no_architectures(model_copy: Path) -> None:
    config = json.loads((model_copy / "config.json").read_text())
    del config["architectures"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"names no architectures.*LlamaForCausalLM"):
        load_model(model_copy)


@pytest.mark.parametrize(
    ("arch", "model_type"),
    # Gemma 2: soft-capped attention, which the paged kernels do not compute (refused, not served wrong)
    [("GPT2LMHeadModel", "gpt2"), ("Gemma2ForCausalLM", "gemma2")],
)
def test_unsupported_architecture(model_copy: Path, arch: str, model_type: str) -> None:
    _edit_config(model_copy, architectures=[arch], model_type=model_type)
    with pytest.raises(ModelLoadError, match=rf"'{arch}'.*not supported") as info:
        load_model(model_copy)
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert arch in str(info.value)


def test_model_type_disagrees_with_architecture(model_copy: Path) -> None:
    _edit_config(model_copy, model_type="gemma")
    with pytest.raises(ModelLoadError, match=r"model_type 'gemma'.*'llama'"):
        load_model(model_copy)


def test_no_safetensors(model_copy: Path) -> None:
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no safetensors weights"):
        load_model(model_copy)


def test_pickle_weights_are_refused(model_copy: Path) -> None:
    (model_copy / "model.safetensors").rename(model_copy / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pytorch_model\*\.bin.*pickle.*safetensors"):
        load_model(model_copy)


def test_no_tokenizer(model_copy: Path) -> None:
    (model_copy / "tokenizer.json").unlink()
    (model_copy / "tokenizer_config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no tokenizer.*tokenizer\.json or tokenizer_config\.json"):
        load_model(model_copy)


def test_truncated_weights(model_copy: Path) -> None:
    data = (model_copy / "model.safetensors").read_bytes()
    (model_copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"truncated"):
        load_model(model_copy)


@pytest.mark.parametrize("dtype", ["int8", "float64", "half-ish", torch.int32])
def test_bad_dtype(model_dirs, dtype) -> None:
    with pytest.raises(ModelLoadError, match=r"unsupported dtype.*bfloat16"):
        load_model(model_dirs["llama"], dtype=dtype)


def test_bad_device(model_dirs) -> None:
    with pytest.raises(ModelLoadError, match=r"invalid device"):
        load_model(model_dirs["llama"], device="toaster")


@pytest.mark.parametrize(
    ("device", "says"),
    [("meta", r"unsupported device 'meta'"), ("cuda", r"requested, but this torch"), ("cuda:7", r"cuda:7")],
)
def test_device_this_machine_cannot_use(model_dirs, device: str, says: str) -> None:
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the GPUs asked for")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match=says):
        load_model(model_dirs["llama"], device=device)
