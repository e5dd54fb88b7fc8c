"""Build a plain C source into a shared library with the system compiler, once per machine, and load it.

The library is cached as $PDSERVE_CACHE_DIR/kernels/<stem>-<hash>.so (default ~/.cache/pdserve/kernels);
the hash covers the source, the compiler, the flags and the CPU's feature flags, since -march=native code
may not run on another CPU sharing the same home directory. Processes starting at once may all compile:
each writes its own temporary file and renames it into place, so a reader finds no library or a whole one.

Flags are tried from fastest to most portable: OpenMP is dropped where the compiler lacks it (the kernel
then runs on one thread), -march=native where the compiler does not know it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import structlog

log = structlog.get_logger("pdserve.kernels")

# -fopenmp links libgomp.so.1, the soname of the libgomp that torch's Linux wheels bundle and load first,
# so the dynamic linker reuses torch's copy: one OpenMP runtime, one thread pool, no oversubscription.
FLAG_SETS: tuple[tuple[str, ...], ...] = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3",),
)
# No -ffast-math: the kernel's float operations run in the order written, so results are reproducible.
COMMON_FLAGS = ("-std=gnu11", "-shared", "-fPIC", "-Wno-unknown-pragmas", "-Werror=implicit-function-declaration")
COMPILE_TIMEOUT_S = 120


class NativeBuildError(RuntimeError):
    """No compiler, or every flag set failed; the message carries the compiler's last error output."""


def cache_dir() -> Path:
    """$PDSERVE_CACHE_DIR/kernels, or ~/.cache/pdserve/kernels."""
    root = os.environ.get("PDSERVE_CACHE_DIR") or Path.home() / ".cache" / "pdserve"
    return Path(root).expanduser() / "kernels"


def find_compiler() -> list[str] | None:
    """$CC (split like a shell would), else cc, else gcc from PATH; None when there is none."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    for name in ("cc", "gcc"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def load_library(source: Path) -> ctypes.CDLL:
    """The library built from `source`, compiled on first use; raises NativeBuildError or OSError."""
    return ctypes.CDLL(str(build_library(source, cache_dir())))


def load_bound(source: Path, signatures: dict[str, list[type]], fallback: str) -> ctypes.CDLL | None:
    """`load_library` with each function's argument types set (every function returns int), or
    None, logged with what runs instead (`fallback`), when the library cannot be built or loaded."""
    try:
        library = load_library(source)
    except (NativeBuildError, OSError) as exc:
        log.warning(f"native CPU kernels unavailable; using {fallback}", source=source.name, error=str(exc))
        return None
    for name, argtypes in signatures.items():
        getattr(library, name).argtypes = argtypes
        getattr(library, name).restype = ctypes.c_int
    return library


def build_library(source: Path, directory: Path) -> Path:
    """Path of the cached library for `source` in `directory`, compiling it if no process has yet."""
    compiler = find_compiler()
    if compiler is None:
        raise NativeBuildError("no C compiler: set CC or put cc or gcc on PATH")
    text = source.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        library = directory / f"{source.stem}-{_build_hash(text, compiler, flags)}.so"
        if library.exists():
            return library
        try:
            _compile(compiler, flags, source, library)
            return library
        except NativeBuildError as exc:
            errors.append(str(exc))
    raise NativeBuildError(f"could not compile {source.name}:\n" + "\n".join(errors))


def _compile(compiler: list[str], flags: tuple[str, ...], source: Path, library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=library.parent, prefix=f".{library.stem}-", suffix=".tmp")
    os.close(fd)
    command = [*compiler, *flags, *COMMON_FLAGS, str(source), "-o", temporary]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if proc.returncode != 0:
            raise NativeBuildError(f"{shlex.join(command)} exited {proc.returncode}: {proc.stderr.strip()}")
        os.replace(temporary, library)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NativeBuildError(f"{shlex.join(command)}: {exc}") from exc
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _build_hash(text: bytes, compiler: list[str], flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256(text)
    for part in (*compiler, *flags, *COMMON_FLAGS, _compiler_stamp(compiler[0]), _cpu_features()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def _compiler_stamp(executable: str) -> str:
    # The binary's size and mtime stand in for its version without running it on every start.
    path = shutil.which(executable) or executable
    try:
        stat = os.stat(path)
    except OSError:
        return path
    return f"{os.path.realpath(path)}:{stat.st_size}:{stat.st_mtime_ns}"


def _cpu_features() -> str:
    """The CPU's feature flags (x86 'flags', Arm 'Features' in /proc/cpuinfo), else its architecture."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return value.strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"
