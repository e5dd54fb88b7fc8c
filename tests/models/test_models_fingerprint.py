"""Fingerprints: equal for equal config and weights, different otherwise, and cheap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pdserve.models import create_random_model, load_model
from pdserve.models.fingerprint import model_fingerprint

_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "tie_word_embeddings": True,
}


def test_same_seed_same_fingerprint_different_seed_different(tmp_path: Path) -> None:
    config = _CONFIG
    a = model_fingerprint(create_random_model(tmp_path / "a", dict(config), seed=3))
    b = model_fingerprint(create_random_model(tmp_path / "b", dict(config), seed=3))
    c = model_fingerprint(create_random_model(tmp_path / "c", dict(config), seed=4))
    assert a == b != c
    assert len(a) == 32 and int(a, 16) >= 0


def test_loaded_fingerprint_matches_directory_fingerprint(model_dirs) -> None:
    assert load_model(model_dirs["qwen3"]).fingerprint == model_fingerprint(model_dirs["qwen3"])


def test_config_change_changes_fingerprint(model_dirs, tmp_path: Path) -> None:
    path = Path(shutil.copytree(model_dirs["llama"], tmp_path / "model"))
    before = model_fingerprint(path)
    config = json.loads((path / "config.json").read_text())
    # Reordering keys, reformatting and a new transformers_version change nothing...
    config["transformers_version"] = "9.9.9"
    (path / "config.json").write_text(json.dumps(dict(reversed(config.items()))))
    assert model_fingerprint(path) == before
    # ...a real change does.
    config["rms_norm_eps"] = 1e-6
    (path / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(path) != before


def test_weight_change_changes_fingerprint(model_dirs, tmp_path: Path) -> None:
    path = Path(shutil.copytree(model_dirs["llama"], tmp_path / "model"))
    before = model_fingerprint(path)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0x01  # the last byte of every tensor is inside a sampled slice
    (path / "model.safetensors").write_bytes(bytes(data))
    assert model_fingerprint(path) != before


def test_different_architectures_differ(model_dirs) -> None:
    prints = {model_fingerprint(path) for path in model_dirs.values()}
    assert len(prints) == len(model_dirs)
