"""Loading in each supported dtype: the spellings, 'auto', and a forward pass on CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from pdserve.models import load_model


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
        ("auto", torch.float32),
    ],
)
def test_dtype_loads_and_runs(model_dirs, dtype, expected: torch.dtype) -> None:
    loaded = load_model(model_dirs["llama"], dtype=dtype)
    assert loaded.dtype == expected
    assert all(p.dtype == expected for p in loaded.model.parameters())
    with torch.no_grad():
        logits = loaded.model(torch.tensor([loaded.tokenizer.encode("hello")])).logits
    assert logits.shape == (1, 5, 261) and torch.isfinite(logits).all()


def test_fingerprint_ignores_dtype(model_dirs) -> None:
    prints = {load_model(model_dirs["llama"], dtype=d).fingerprint for d in ("fp32", "bf16", "fp16")}
    assert len(prints) == 1


def test_auto_follows_config_dtype(model_dirs, tmp_path: Path) -> None:
    path = Path(shutil.copytree(model_dirs["llama"], tmp_path / "model"))
    config = json.loads((path / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (path / "config.json").write_text(json.dumps(config))
    assert load_model(path).dtype == torch.bfloat16
