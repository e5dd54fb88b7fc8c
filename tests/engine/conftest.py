"""Engine fixtures: the built-in Llama offline and its Hugging Face reference, once per module.
A module that needs other engine options defines its own `llm`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hf_reference import load_hf
from pdserve import LLM


@pytest.fixture(scope="module")
def llm(model_dirs: dict[str, Path]) -> LLM:
    return LLM(model_dirs["llama"], dtype="float32")


@pytest.fixture(scope="module")
def hf(model_dirs: dict[str, Path]) -> torch.nn.Module:
    return load_hf(model_dirs["llama"])
