"""A model's fingerprint: one short string that names its config and weights.

Prefill and decode workers compare fingerprints before one accepts the other's KV cache, so the
string must be equal for the same model on every machine and cheap to compute at startup. It
hashes config.json (canonicalised) and, for every tensor of the safetensors checkpoint, its name,
dtype, shape and a few evenly spaced slices of its bytes, read straight from the files: a few
hundred KiB of reads for a multi-GB model, never the whole checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, BinaryIO

from pdserve.errors import ModelLoadError
from pdserve.models.model_dir import read_config, weight_files

# Bump when the recipe changes, so that fingerprints from different recipes never compare equal.
_RECIPE = b"pdserve-fingerprint-v1"
# Keys that do not change what the model computes: the writer's transformers version, and the dtype
# hint (the dtype a model runs in is compared separately, and stored dtypes are in the tensor headers).
_IGNORED_CONFIG_KEYS = frozenset({"transformers_version", "dtype", "torch_dtype", "_name_or_path"})
_SLICES_PER_TENSOR = 4
_SLICE_BYTES = 1024
_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header


def model_fingerprint(path: Path) -> str:
    """Return a 32-hex-digit fingerprint of the model directory `path` (config.json + safetensors).

    Same config.json content (ignoring key order, whitespace and the keys above) and same tensors
    give the same string on any machine, whatever the sharding. A tensor that differs only outside
    the sampled slices is not detected: this is an identity check, not an integrity check.
    """
    config = {k: v for k, v in read_config(path).items() if k not in _IGNORED_CONFIG_KEYS}
    digest = hashlib.sha256(_RECIPE)
    digest.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    tensors: list[tuple[str, Path, dict[str, Any], int]] = []
    for file in weight_files(path):
        header, data_start = _read_header(file)
        tensors.extend((name, file, info, data_start) for name, info in header.items() if name != "__metadata__")
    tensors.sort(key=lambda t: t[0])
    handles: dict[Path, BinaryIO] = {}
    try:
        for name, file, info, data_start in tensors:
            handle = handles.get(file) or handles.setdefault(file, file.open("rb"))
            digest.update(json.dumps([name, info["dtype"], info["shape"]]).encode())
            begin, end = info["data_offsets"]
            digest.update(_sample(handle, data_start + begin, data_start + end))
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"cannot read the safetensors weights in {path} ({e}): re-download them") from e
    finally:
        for handle in handles.values():
            handle.close()
    return digest.hexdigest()[:32]


def _read_header(file: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its tensor data starts."""
    try:
        with file.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > _MAX_HEADER_BYTES:
                raise ValueError(f"header of {size} bytes is implausibly large")
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (OSError, struct.error, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"{file} is not a valid safetensors file ({e}): re-download or re-convert it") from e
    return header, 8 + size


def _sample(handle: BinaryIO, begin: int, end: int) -> bytes:
    """All bytes of [begin, end) if small, else _SLICES_PER_TENSOR slices spread from its start to its end."""
    length = end - begin
    if length <= _SLICES_PER_TENSOR * _SLICE_BYTES:
        starts, size = [begin], length
    else:
        # The first slice starts at the tensor's first byte and the last ends at its last byte.
        span = length - _SLICE_BYTES
        starts = [begin + i * span // (_SLICES_PER_TENSOR - 1) for i in range(_SLICES_PER_TENSOR)]
        size = _SLICE_BYTES
    parts = []
    for start in starts:
        handle.seek(start)
        part = handle.read(size)
        if len(part) != size:
            raise ValueError(f"file ends at byte {start + len(part)}, inside a tensor: it is truncated")
        parts.append(part)
    return b"".join(parts)
