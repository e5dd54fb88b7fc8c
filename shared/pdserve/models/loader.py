"""load_model: a local Hugging Face model directory (or the built-in tiny model) to a LoadedModel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from pdserve.errors import ModelLoadError
from pdserve.models.builtin import builtin_model_path
from pdserve.models.dtype import resolve_dtype
from pdserve.models.fingerprint import model_fingerprint
from pdserve.models.json_file import read_json_object
from pdserve.models.loaded_model import LoadedModel
from pdserve.models.model_dir import check_model_dir


def load_model(
    model: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load the model directory `model` (None: the built-in tiny Llama) onto `device` in `dtype`.

    dtype 'auto' takes config.json's dtype, else float32. attn_implementation is passed to
    transformers (None: its default). Everything is checked before weights are read, and every
    failure raises ModelLoadError saying what is wrong and what to do. Only local files are read:
    nothing is downloaded and no code shipped with a model is executed.
    """
    path = builtin_model_path() if model is None else Path(model).expanduser()
    raw_config = check_model_dir(path)
    torch_dtype = resolve_dtype(dtype, raw_config)
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelLoadError(f"invalid device {device!r} ({e}): use e.g. 'cpu', 'cuda' or 'cuda:1'") from e
    check_device(target)
    eos_from_generation = _generation_eos(path)
    fingerprint = model_fingerprint(path)

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
        )
    except Exception as e:  # transformers raises many types; all mean "this directory did not load"
        raise ModelLoadError(f"loading the model in {path} failed: {type(e).__name__}: {e}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise ModelLoadError(f"loading the tokenizer in {path} failed: {type(e).__name__}: {e}") from e

    # Without the accelerate package transformers cannot load straight onto a device (device_map), so
    # weights land on the CPU first. Called via nn.Module: transformers' typed wrapper of .to confuses mypy.
    torch.nn.Module.to(hf_model, target)
    hf_model.eval()
    hf_model.requires_grad_(False)
    config = hf_model.config
    return LoadedModel(
        model=hf_model,
        tokenizer=tokenizer,
        config=config,
        path=path,
        dtype=torch_dtype,
        fingerprint=fingerprint,
        eos_token_ids=_eos_token_ids(eos_from_generation, config, tokenizer),
        max_model_len=_max_model_len(config),
    )


def _generation_eos(path: Path) -> Any:
    """eos_token_id from generation_config.json (int, list or None); None if the file is absent."""
    file = path / "generation_config.json"
    if not file.is_file():
        return None
    return read_json_object(file, str(file), "fix or delete it").get("eos_token_id")


def _eos_token_ids(
    from_generation: Any, config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[int, ...]:
    """The first of generation_config.json, config.json, tokenizer that names eos ids; () if none does."""
    for source in (from_generation, getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        ids = [source] if isinstance(source, int) else list(source)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ModelLoadError(f"eos_token_id must be an int or a list of ints, got {source!r}")
        if ids:
            return tuple(dict.fromkeys(ids))
    return ()


def _max_model_len(config: PretrainedConfig) -> int:
    """max_position_embeddings, capped by the sliding window when any layer uses one.

    pdserve's attention is full attention over every cached token; past the window a sliding-window
    model would attend to tokens it was built never to see, so outputs would silently diverge.
    Capping keeps every served sequence exact.
    """
    limit = _rope_limit(config, int(config.max_position_embeddings))
    window = getattr(config, "sliding_window", None)
    if not window:
        return limit
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        uses_window = "sliding_attention" in layer_types
    else:
        uses_window = bool(getattr(config, "use_sliding_window", True))
    return min(limit, int(window)) if uses_window else limit


# RoPE variants whose frequencies transformers picks from the longest position in the forward
# pass: pdserve packs many sequences into one pass, so past the original length a short sequence
# would get the long sequences' frequencies. Below it every variant is exact.
_POSITION_DEPENDENT_ROPE = ("dynamic", "longrope")


def _rope_limit(config: PretrainedConfig, limit: int) -> int:
    # transformers 5 names it rope_parameters (rope_scaling remains as an alias).
    scaling = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    if rope_type not in _POSITION_DEPENDENT_ROPE:
        return limit
    original = scaling.get("original_max_position_embeddings") or getattr(
        config, "original_max_position_embeddings", None
    )
    return min(limit, int(original)) if original else limit


def check_device(target: torch.device) -> None:
    """Refuse a device this machine cannot run on before any weights are read (torch would fail
    later, mid-load, with an AssertionError or a CUDA error that says nothing of the flag)."""
    if target.type == "cpu":
        return
    if target.type != "cuda":
        raise ModelLoadError(f"unsupported device {str(target)!r}: pdserve runs on 'cpu' or 'cuda[:N]'")
    if not torch.cuda.is_available():
        build = "has no CUDA support" if torch.version.cuda is None else "sees no GPU"
        raise ModelLoadError(
            f"device {str(target)!r} requested, but this torch ({torch.__version__}) {build}: "
            "use --device cpu, or install a CUDA build of torch on a machine with a GPU"
        )
    if target.index is not None and target.index >= torch.cuda.device_count():
        raise ModelLoadError(
            f"device {str(target)!r} requested, but this machine has {torch.cuda.device_count()} GPU(s) "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
