"""The C decode kernel (cpu_paged_attention) against float64 attention and the torch reference, its dispatch,
and its build: caching, concurrent builds, and the fallback when no compiler works."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pdserve.kernels as kernels
import pytest
import structlog
import torch
from paged_cases import PagedCase, make_case, naive_decode
from pdserve.kernels import cpu_paged_attention, native_build, reference

needs_compiler = pytest.mark.skipif(
    native_build.find_compiler() is None, reason="no C compiler ($CC, cc or gcc) to build the native CPU kernel"
)

# (atol, rtol) against float64: fp32 differs by summation order only; bf16 rounds inputs and output.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}
# (num_heads, num_kv_heads): query heads per kv head 1, 2, 4 and 8.
HEADS = [(4, 4), (8, 4), (8, 2), (8, 1)]
# 64 and 128 run the kernel's unrolled copies, 16 and 80 its generic one (80 is not a multiple of its 16 lanes).
HEAD_DIMS = [16, 64, 80, 128]
# One token, ragged lengths up to 300 and one exact multiple of both block sizes, in one batch.
CONTEXT_LENS = [1, 7, 45, 123, 299, 64]


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernels.BACKEND_ENV, raising=False)


@pytest.fixture
def native() -> None:
    assert cpu_paged_attention.available(), "a C compiler is on PATH but the kernel did not build; see the warning"


def _case(dtype: torch.dtype, block_size: int, num_kv_heads: int, head_dim: int, seed: int = 0) -> PagedCase:
    case = make_case(CONTEXT_LENS, block_size, num_kv_heads, head_dim, dtype, seed=seed)
    # Padding columns past every sequence's blocks, holding other valid block ids.
    gen = torch.Generator().manual_seed(seed)
    padding = torch.randint(0, case.k_cache.shape[0], (len(CONTEXT_LENS), 3), generator=gen, dtype=torch.int32)
    case.block_tables = torch.cat([case.block_tables, padding], dim=1)
    return case


def _query(case: PagedCase, num_heads: int, seed: int = 0) -> torch.Tensor:
    # The engine passes a transposed view, so the query is not contiguous.
    gen = torch.Generator().manual_seed(seed)
    batch, head_dim = len(case.context_lens), case.k_cache.shape[-1]
    return torch.randn(num_heads, batch, head_dim, generator=gen).to(case.k_cache.dtype).transpose(0, 1)


def _args(query: torch.Tensor, case: PagedCase) -> tuple[torch.Tensor, ...]:
    return query, case.k_cache, case.v_cache, case.block_tables, case.context_lens


@needs_compiler
@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), HEADS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_matches_naive_and_reference(
    dtype: torch.dtype, block_size: int, num_heads: int, num_kv_heads: int, head_dim: int
) -> None:
    case = _case(dtype, block_size, num_kv_heads, head_dim, seed=head_dim + num_heads)
    query = _query(case, num_heads, seed=block_size)
    scale = head_dim**-0.5
    out = cpu_paged_attention.paged_attention_decode(*_args(query, case), scale)
    assert out.shape == query.shape and out.dtype == dtype
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), naive_decode(query, case, scale), atol=atol, rtol=rtol)
    expected = reference.paged_attention_decode(*_args(query, case), scale)
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)


@needs_compiler
@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("dtype", list(TOLERANCES))
def test_thread_count_does_not_change_results(dtype: torch.dtype) -> None:
    # Two sequences and two threads split the kv heads across work items; every head still adds in one order.
    case = make_case([300, 17], 16, 4, 64, dtype)
    query = _query(case, 8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = cpu_paged_attention.paged_attention_decode(*_args(query, case), 0.125)
        torch.set_num_threads(2)
        double = cpu_paged_attention.paged_attention_decode(*_args(query, case), 0.125)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, double)


@needs_compiler
@pytest.mark.usefixtures("native")
def test_bad_metadata_raises_instead_of_reading_out_of_bounds() -> None:
    case = make_case([20, 5], 4, 2, 16, torch.float32)
    query = _query(case, 4)
    bad_block = case.block_tables.clone()
    bad_block[0, 1] = case.k_cache.shape[0]
    with pytest.raises(ValueError, match="block table entry"):
        cpu_paged_attention.paged_attention_decode(query, case.k_cache, case.v_cache, bad_block, case.context_lens, 1.0)
    for length in (0, case.block_tables.shape[1] * 4 + 1):
        lens = torch.tensor([length, 5], dtype=torch.int32)
        with pytest.raises(ValueError, match="context length"):
            cpu_paged_attention.paged_attention_decode(query, case.k_cache, case.v_cache, case.block_tables, lens, 1.0)


@needs_compiler
@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("forced", ["", "native", "torch"])
def test_dispatch(monkeypatch: pytest.MonkeyPatch, forced: str) -> None:
    monkeypatch.setenv(kernels.BACKEND_ENV, forced)
    calls = []
    native_decode = cpu_paged_attention.paged_attention_decode

    def counting(*args: object) -> torch.Tensor:
        calls.append(1)
        return native_decode(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(cpu_paged_attention, "paged_attention_decode", counting)
    case = make_case([5, 3], 4, 2, 8, torch.float32)
    args = (*_args(_query(case, 4), case), 0.5)
    out = kernels.paged_attention_decode(*args)
    assert len(calls) == (forced != "torch")
    if forced == "torch":
        assert torch.equal(out, reference.paged_attention_decode(*args))
    # Everything but decode attention runs the reference under native too.
    kv = kernels.gather_kv_blocks(case.k_cache, case.v_cache, case.block_tables[0], 5)
    assert torch.equal(kv, reference.gather_kv_blocks(case.k_cache, case.v_cache, case.block_tables[0], 5))


@pytest.mark.parametrize("forced", ["", "native"])
def test_float16_runs_the_reference(monkeypatch: pytest.MonkeyPatch, forced: str) -> None:
    monkeypatch.setenv(kernels.BACKEND_ENV, forced)
    case = make_case([9, 2], 4, 2, 16, torch.float16)
    args = (*_args(_query(case, 4), case), 0.25)
    assert not cpu_paged_attention.supports(args[0], case.k_cache)
    assert torch.equal(kernels.paged_attention_decode(*args), reference.paged_attention_decode(*args))


@pytest.fixture
def broken_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    """The kernel rebuilt (in an empty cache) with a compiler that always fails; the real one afterwards."""
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("PDSERVE_CACHE_DIR", str(tmp_path))
    cpu_paged_attention._library.cache_clear()
    yield
    cpu_paged_attention._library.cache_clear()


@pytest.mark.usefixtures("broken_compiler")
def test_failed_build_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    case = make_case([9, 2], 4, 2, 16, torch.float32)
    args = (*_args(_query(case, 4), case), 0.25)
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            assert torch.equal(kernels.paged_attention_decode(*args), reference.paged_attention_decode(*args))
    warnings = [log for log in logs if log["log_level"] == "warning"]
    assert len(warnings) == 1 and "could not compile" in warnings[0]["error"]
    monkeypatch.setenv(kernels.BACKEND_ENV, "native")
    with pytest.raises(RuntimeError, match="native"):
        kernels.paged_attention_decode(*args)


def test_no_compiler_is_a_build_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(native_build.NativeBuildError, match="no C compiler"):
        native_build.build_library(cpu_paged_attention.SOURCE, tmp_path)


TINY_SOURCE = "int pdserve_answer(void) { return 42; }\n"
# Loads native_build.py by path: importing pdserve.kernels would import torch, seconds per process.
BUILD_IN_SUBPROCESS = (
    "import importlib.util, sys; from pathlib import Path;"
    "spec = importlib.util.spec_from_file_location('native_build', sys.argv[1]);"
    "build = importlib.util.module_from_spec(spec); spec.loader.exec_module(build);"
    "print(build.build_library(Path(sys.argv[2]), Path(sys.argv[3])))"
)


@needs_compiler
def test_build_is_cached_and_safe_to_race(tmp_path: Path) -> None:
    source = tmp_path / "tiny.c"
    source.write_text(TINY_SOURCE)
    cache = tmp_path / "cache"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD_IN_SUBPROCESS, native_build.__file__, str(source), str(cache)],
            stdout=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    paths = {proc.communicate(timeout=120)[0].decode().strip() for proc in racers}
    assert all(proc.returncode == 0 for proc in racers)
    assert len(paths) == 1 and [p.name for p in cache.iterdir()] == [Path(paths.pop()).name]
    library = native_build.build_library(source, cache)
    mtime = library.stat().st_mtime_ns
    assert native_build.build_library(source, cache) == library and library.stat().st_mtime_ns == mtime
    assert ctypes.CDLL(str(library)).pdserve_answer() == 42
    # Another source (or compiler, flags, CPU) is another library.
    source.write_text(TINY_SOURCE.replace("42", "43"))
    assert native_build.build_library(source, cache) != library


@needs_compiler
def test_portable_build_matches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The last resort flags: baseline SIMD for the architecture, one thread, no OpenMP.
    monkeypatch.setattr(native_build, "FLAG_SETS", (("-O3",),))
    library = ctypes.CDLL(str(native_build.build_library(cpu_paged_attention.SOURCE, tmp_path)))
    library.pdserve_paged_decode.argtypes = cpu_paged_attention._ARGTYPES
    monkeypatch.setattr(cpu_paged_attention, "_library", lambda: library)
    for dtype in TOLERANCES:
        case = _case(dtype, 16, 2, 64)
        query = _query(case, 8)
        out = cpu_paged_attention.paged_attention_decode(*_args(query, case), 0.125)
        atol, rtol = TOLERANCES[dtype]
        torch.testing.assert_close(out.double(), naive_decode(query, case, 0.125), atol=atol, rtol=rtol)
