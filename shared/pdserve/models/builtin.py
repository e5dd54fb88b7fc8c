"""pdserve's built-in default model: a tiny random-weight Llama, built once per cache directory.

No model can be downloaded where pdserve is developed and tested, so `pdserve up` and the tests
serve this one (the ecosystem's tiny-random-llama convention). Its outputs are meaningless text but
deterministic, which is what correctness tests against transformers need.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pdserve.models.random_model import DEFAULT_INIT_STD, create_random_model

# The folder name carries the recipe's version: an existing folder is reused as it is, so any change
# to this config, the weight generator or the tokenizer must bump it.
BUILTIN_MODEL_NAME = "tiny-llama-v1"
BUILTIN_SEED = 0
TINY_LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "initializer_range": DEFAULT_INIT_STD,
}


def default_cache_dir() -> Path:
    """$PDSERVE_CACHE_DIR if set, else ~/.cache/pdserve."""
    return Path(os.environ.get("PDSERVE_CACHE_DIR") or Path.home() / ".cache" / "pdserve").expanduser()


def builtin_model_path(cache_dir: str | Path | None = None) -> Path:
    """The directory of the built-in tiny Llama under `cache_dir` (default_cache_dir()), created on first use.

    The model is built in a temporary folder beside its final place and renamed into it, so a reader
    never sees a half-written model; when several processes race, the first rename wins and the others
    discard their copy and use the winner's (it is bit-identical). Delete the folder to rebuild it.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / BUILTIN_MODEL_NAME
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{BUILTIN_MODEL_NAME}-", dir=root))
    try:
        create_random_model(staging, TINY_LLAMA_CONFIG, seed=BUILTIN_SEED)
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():
                raise
            # Lost the race: another process renamed its identical copy into place first.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
