"""The byte-level tokenizer: ids, exact round trips, no implicit BOS, ChatML chat template."""

from __future__ import annotations

import random

import pytest
from pdserve.models import build_byte_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def test_special_token_ids(tokenizer) -> None:
    assert len(tokenizer) == 261
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (256, 257, 258)
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [259, 260]


def test_one_token_per_utf8_byte_and_no_bos(tokenizer) -> None:
    text = "héllo 👋"
    assert tokenizer.encode(text) == list(text.encode("utf-8"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "  leading and trailing  ",
        "a\r\n\tb\x00c",
        "日本語のテキスト",
        "🙂‍↔️ zwj",
        "<|im_end|> in text",
    ],
)
def test_round_trip(tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_round_trip_random_unicode(tokenizer) -> None:
    rng = random.Random(0)
    # Every code point but the surrogates, which cannot be encoded as UTF-8.
    alphabet = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for _ in range(50):
        text = "".join(chr(rng.choice(alphabet)) for _ in range(rng.randint(0, 40)))
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_ids_past_the_tokenizer_decode_to_nothing(tokenizer) -> None:
    assert tokenizer.decode([104, 105, 300, 1000]) == "hi"


def test_chat_template(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without == text.removesuffix("<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids[0] == 259 and ids.count(260) == 2 and tokenizer.decode(ids) == text
