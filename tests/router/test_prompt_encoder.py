"""The router's short-cut to the Rust tokenizer gives exactly what the full Hugging Face call gives,
and is not used where it could differ."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pdserve.models import builtin_model_path
from pdserve.services.router.prompts import PromptTokenizer, fast_encoder
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(builtin_model_path(), local_files_only=True)


def _with_bos(tokenizer: Any) -> Any:
    bos = copy.deepcopy(tokenizer)
    token = "<|begin_of_text|>"
    bos._tokenizer.post_processor = TemplateProcessing(
        single=f"{token} $A", special_tokens=[(token, bos.convert_tokens_to_ids(token))]
    )
    return bos


@settings(max_examples=300, deadline=None)
@given(text=st.text(min_size=1, max_size=200))
def test_fast_path_matches_the_full_call(tokenizer: Any, text: str) -> None:
    encode = fast_encoder(tokenizer)
    assert encode is not None, "the built-in model's tokenizer should get the fast path"
    assert encode(text) == list(tokenizer(text, verbose=False).input_ids)


def test_fast_path_keeps_a_bos_post_processor(tokenizer: Any) -> None:
    bos = _with_bos(tokenizer)
    encode = fast_encoder(bos)
    assert encode is not None
    full = list(bos("hello <|end_of_text|> world", verbose=False).input_ids)
    assert full[0] == bos.convert_tokens_to_ids("<|begin_of_text|>")
    assert encode("hello <|end_of_text|> world") == full


def test_a_truncating_backend_does_not_truncate_prompts(tokenizer: Any) -> None:
    truncating = copy.deepcopy(tokenizer)
    truncating._tokenizer.enable_truncation(8)
    encode = fast_encoder(truncating) or (lambda t: list(truncating(t, verbose=False).input_ids))
    text = "a prompt well over eight tokens long"
    assert encode(text) == list(tokenizer(text, verbose=False).input_ids)
    assert len(encode(text)) > 8


def test_no_fast_path_when_the_class_encodes_its_own_way(tokenizer: Any) -> None:
    class OwnEncoding(type(tokenizer)):  # type: ignore[misc]
        def _encode_plus(self, *args: Any, **kwargs: Any) -> Any:
            return super()._encode_plus(*args, **kwargs)

    own = copy.deepcopy(tokenizer)
    own.__class__ = OwnEncoding
    assert fast_encoder(own) is None
    assert fast_encoder(object()) is None


async def test_prompt_tokenizer_short_and_long_prompts_agree_with_the_full_call(tokenizer: Any) -> None:
    prompts = PromptTokenizer(tokenizer)
    try:
        for text in ("hi", "a longer prompt " * 100):  # on the loop, then on the thread
            assert await prompts.encode(text) == list(tokenizer(text, verbose=False).input_ids)
    finally:
        prompts.close()
