"""Streaming detokenization: deltas add up to the final text, and never run ahead of it."""

from __future__ import annotations

import random

import pytest
from pdserve.models import build_byte_tokenizer
from pdserve.services.router.detokenizer import StreamDetokenizer

TOKENIZER = build_byte_tokenizer()
EOS = 257


def decode(ids: list[int]) -> str:
    return str(TOKENIZER.decode(ids, skip_special_tokens=True))


def stream(ids: list[int], sizes: list[int], stop: list[str] | None = None, final: str | None = None) -> list[str]:
    detok = StreamDetokenizer(TOKENIZER, stop)
    deltas, at = [], 0
    for size in sizes:
        deltas.append(detok.push(ids[at : at + size]))
        at += size
    deltas.append(detok.finish(ids[at:], final))
    return deltas


def test_multibyte_characters_split_across_tokens_are_held_back() -> None:
    text = "héllo € 😀!"
    ids = list(text.encode())
    deltas = stream(ids, [1] * (len(ids) - 1))
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert "😀" in deltas  # sent whole, once its fourth byte arrived


def test_special_tokens_are_skipped() -> None:
    ids = [*b"ab", EOS, *b"c"]
    assert "".join(stream(ids, [1, 1, 1])) == "abc"


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_and_chunk_sizes_add_up_to_the_full_decode(seed: int) -> None:
    rng = random.Random(seed)
    # Mostly multi-byte UTF-8 and stray continuation bytes: the hard cases.
    ids = [
        rng.choice([rng.randrange(256), rng.randrange(0x80, 0xC0), rng.randrange(0xE0, 0xF0), 97]) for _ in range(60)
    ]
    sizes: list[int] = []
    while sum(sizes) < len(ids) - 1:
        sizes.append(min(rng.randint(1, 4), len(ids) - 1 - sum(sizes)))
    detok = StreamDetokenizer(TOKENIZER)
    sent, at = "", 0
    for size in sizes:
        sent += detok.push(ids[at : at + size])
        at += size
        # What was sent is final: a prefix of the decode of everything so far.
        assert decode(ids[:at]).startswith(sent)
    sent += detok.finish(ids[at:], None)
    assert sent == decode(ids)


def test_stop_string_tail_is_held_back_until_the_end() -> None:
    detok = StreamDetokenizer(TOKENIZER, ["STOP", "x"])
    assert detok.push(list(b"hello ST")) == "hello"  # the last 3 characters could start "STOP"
    assert detok.push(list(b"O")) == " "
    # The worker matched "STOP" on the next token and cut its text before it.
    assert detok.finish(list(b"P"), "hello ") == ""


def test_stop_string_that_does_not_match_is_released() -> None:
    deltas = stream(list(b"abcdef"), [2, 2], stop=["zzz"], final="abcdef")
    assert deltas == ["", "ab", "cdef"]


def test_final_text_longer_than_the_decode_is_sent_in_full() -> None:
    # include_stop_str_in_output: the worker's text keeps the stop string.
    deltas = stream(list(b"say END now"), [5], stop=["END"], final="say END")
    assert "".join(deltas) == "say END"
