"""The built-in tiny Llama: its shape, determinism, atomic creation and non-degenerate outputs."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pdserve.models import builtin_model_path, load_model


def test_builtin_is_bit_identical_across_cache_dirs(tmp_path: Path) -> None:
    first = builtin_model_path(tmp_path / "a")
    second = builtin_model_path(tmp_path / "b")
    assert first.name == second.name == "tiny-llama-v1"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert load_model(first).fingerprint == load_model(second).fingerprint


def test_builtin_reuses_existing_and_leaves_no_staging(tmp_path: Path) -> None:
    path = builtin_model_path(tmp_path)
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert builtin_model_path(tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert os.listdir(tmp_path) == ["tiny-llama-v1"]


def test_builtin_cache_dir_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PDSERVE_CACHE_DIR", str(tmp_path / "env"))
    assert builtin_model_path() == tmp_path / "env" / "tiny-llama-v1"


def test_load_model_none_is_the_builtin(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PDSERVE_CACHE_DIR", str(tmp_path))
    loaded = load_model()
    assert loaded.path == tmp_path / "tiny-llama-v1"
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert (loaded.num_layers, loaded.num_heads, loaded.num_kv_heads, loaded.head_dim) == (4, 4, 2, 16)
    assert loaded.vocab_size == len(loaded.tokenizer) == 261
    assert loaded.config.hidden_size == 64 and loaded.config.intermediate_size == 176
    assert loaded.config.tie_word_embeddings is False
    assert loaded.max_model_len == 2048
    assert loaded.eos_token_ids == (257, 260)
    assert loaded.dtype == torch.float32 and not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_greedy_generation_does_not_collapse(model_dirs) -> None:
    loaded = load_model(model_dirs["llama"])
    for prompt in ("Hello, my name is", "1 2 3", "The quick brown fox"):
        ids = torch.tensor([loaded.tokenizer.encode(prompt)])
        with torch.no_grad():
            out = loaded.model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=258)
        new = out[0, ids.shape[1] :].tolist()
        assert len(set(new)) >= 10, new
        assert len(set(new[-8:])) > 1, new


def test_builtin_losing_the_creation_race_uses_the_winner(tmp_path: Path, monkeypatch) -> None:
    from pdserve.models import builtin

    real_create = builtin.create_random_model

    def create_while_another_process_wins(path, config, *, seed):
        real_create(path, config, seed=seed)
        # Another process finishes first and renames its copy into place.
        winner = Path(real_create(tmp_path / "other", config, seed=seed))
        os.rename(winner, tmp_path / "tiny-llama-v1")
        (tmp_path / "tiny-llama-v1" / "winner").write_text("")
        return path

    monkeypatch.setattr(builtin, "create_random_model", create_while_another_process_wins)
    path = builtin_model_path(tmp_path)
    assert (path / "winner").exists()
    assert os.listdir(tmp_path) == ["tiny-llama-v1"]
