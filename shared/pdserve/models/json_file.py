"""Reading a model's JSON files (config.json, generation_config.json) with errors that say what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pdserve.errors import ModelLoadError


def read_json_object(file: Path, name: str, remedy: str) -> dict[str, Any]:
    """The JSON object in `file`; ModelLoadError "`name` is not valid JSON (...): `remedy`" (or
    not a JSON object) when it cannot be read as one."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{name} is not valid JSON ({e}): {remedy}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{name} is not a JSON object: {remedy}")
    return data
