"""Backend choice: the torch reference on CPU, PDSERVE_KERNELS forcing one, the repo's kernels/ folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pdserve.kernels as kernels
import pytest
import torch
from paged_cases import make_case
from pdserve.kernels import reference

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("forced", ["torch"])
def test_cpu_tensors_run_the_reference(monkeypatch: pytest.MonkeyPatch, forced: str) -> None:
    monkeypatch.setenv(kernels.BACKEND_ENV, forced)
    case = make_case([5, 3], 4, 2, 8, torch.float32)
    query = torch.randn(2, 4, 8)
    args = (query, case.k_cache, case.v_cache, case.block_tables, case.context_lens, 0.5)
    assert torch.equal(kernels.paged_attention_decode(*args), reference.paged_attention_decode(*args))


def test_unknown_backend_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.BACKEND_ENV, "cuda")
    case = make_case([5], 4, 2, 8, torch.float32)
    with pytest.raises(ValueError, match="PDSERVE_KERNELS"):
        kernels.gather_kv_blocks(case.k_cache, case.v_cache, case.block_tables[0], 5)


def test_repo_kernels_folder_is_not_the_kernels_package() -> None:
    # From the repo root, kernels/ is on sys.path; transformers must not take it for the
    # Hugging Face `kernels` package (that needs kernels/ to stay without __init__.py).
    assert not (REPO_ROOT / "kernels" / "__init__.py").exists()
    probe = (
        "import kernels, transformers.utils.import_utils as u;"
        "print(getattr(kernels, '__file__', None), u.is_kernels_available())"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "False"]
