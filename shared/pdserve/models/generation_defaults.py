"""The model's own sampling defaults, from its generation_config.json, as vLLM takes them.

Model makers ship the sampling they tuned for (Qwen2.5-Instruct: temperature 0.7, top_p 0.8,
top_k 20, repetition_penalty 1.05). vLLM applies them to every request that leaves those fields
out (`--generation-config auto`, its default since 0.8); so does pdserve, so the same request
samples the same way on either server. `vllm` (vLLM's name) ignores them: OpenAI's defaults
apply. A folder path reads generation_config.json from there instead of the model's directory.

Only the fields vLLM takes are read; `do_sample` is ignored as vLLM ignores it. Values are
checked at start-up, so a bad file stops the service with a message naming it instead of
failing every request.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pdserve.errors import InvalidRequestError, ModelLoadError
from pdserve.models.json_file import read_json_object
from pdserve.sampling_params import SamplingParams

# generation_config.json key -> SamplingParams field. max_new_tokens becomes a cap on the
# max_tokens a request gets when it leaves max_tokens out.
SAMPLING_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}
AUTO = "auto"  # the model directory's generation_config.json
NONE = "vllm"  # vLLM's name for "no model defaults"


def generation_defaults(model_dir: str | Path, source: str = AUTO) -> dict[str, Any]:
    """SamplingParams field -> the model's default, for the fields its generation_config.json sets.

    `source`: "auto" (the model directory), "vllm" (none) or a folder holding generation_config.json.
    Raises ModelLoadError for an unreadable file or a value SamplingParams refuses.
    """
    if source == NONE:
        return {}
    folder = Path(model_dir) if source == AUTO else Path(source).expanduser()
    if source != AUTO and not folder.is_dir():
        raise ModelLoadError(f"--generation-config {source}: not a folder; use auto, vllm or a folder path")
    file = folder / "generation_config.json"
    if not file.is_file():
        if source != AUTO:
            raise ModelLoadError(f"--generation-config {source}: {file} does not exist")
        return {}
    config = read_json_object(file, str(file), "fix it, or pass --generation-config vllm")
    defaults = {field: config[key] for key, field in SAMPLING_KEYS.items() if config.get(key) is not None}
    try:
        return check_sampling_defaults(defaults)
    except InvalidRequestError as e:
        raise ModelLoadError(f"{file}: {e}; fix it, or pass --generation-config vllm") from e


def check_sampling_defaults(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` (SamplingParams field -> value, fields of SAMPLING_KEYS only) if every value is
    one a request could send; InvalidRequestError naming the first that is not."""
    unknown = sorted(set(defaults) - set(SAMPLING_KEYS.values()))
    if unknown:
        raise InvalidRequestError(f"sampling defaults cover {sorted(SAMPLING_KEYS.values())} only, got {unknown}")
    SamplingParams(**defaults)  # every value checked as a request's would be
    return dict(defaults)
