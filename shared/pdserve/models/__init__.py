"""Model loading: local Hugging Face directories, the built-in tiny model and random test models."""

from pdserve.models.builtin import builtin_model_path
from pdserve.models.byte_tokenizer import build_byte_tokenizer
from pdserve.models.loaded_model import LoadedModel
from pdserve.models.loader import load_model
from pdserve.models.random_model import create_random_model
from pdserve.models.supported import SUPPORTED_ARCHITECTURES

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "LoadedModel",
    "build_byte_tokenizer",
    "builtin_model_path",
    "create_random_model",
    "load_model",
]
