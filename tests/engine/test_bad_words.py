"""vLLM's bad_words: the words' token sequences (and their spellings after a space, when those are
words of their own) never appear in the output. Greedy runs match Hugging Face's generate() with
its NoBadWordsLogitsProcessor on the same sequences; the output is kept to letters (its allowed
tokens) so that words can be written from it."""

from __future__ import annotations

import pytest
import torch
from hf_reference import assert_matches, hf_greedy
from pdserve import LLM, SamplingParams
from pdserve.engine.bad_words import bad_words_token_ids, banned_next
from pdserve.errors import InvalidRequestError
from transformers import LogitsProcessor, LogitsProcessorList, NoBadWordsLogitsProcessor

LETTERS = list(range(ord("a"), ord("z") + 1))  # byte tokenizer: one token per letter
PROMPTS = [list(b"the cat sat. "), list(b"12345 "), list(b"once upon a time, ")]
MAX_NEW = 24


class LettersOnly(LogitsProcessor):
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        kept = torch.full_like(scores, float("-inf"))
        kept[:, LETTERS] = scores[:, LETTERS]
        return kept  # type: ignore[return-value]


def params(bad_words: list[str] | None = None) -> SamplingParams:
    return SamplingParams(
        max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True, allowed_token_ids=LETTERS, bad_words=bad_words
    )


def contains(tokens: list[int], word: list[int]) -> bool:
    return any(tokens[i : i + len(word)] == word for i in range(len(tokens) - len(word) + 1))


@pytest.mark.parametrize("width", [1, 2, 3])
def test_banned_words_never_appear_and_greedy_matches_hf(llm: LLM, hf: torch.nn.Module, width: int) -> None:
    compared = changed = 0
    for prompt, plain in zip(PROMPTS, llm.generate(PROMPTS, params()), strict=True):
        word = list(plain.token_ids[3 : 3 + width])  # a word the model writes unhindered
        out = llm.generate([prompt], params([bytes(word).decode()]))[0].token_ids
        assert not contains(out, word), (word, out)
        changed += out != plain.token_ids
        processors = LogitsProcessorList([LettersOnly(), NoBadWordsLogitsProcessor([word], eos_token_id=None)])
        compared += assert_matches(out, hf_greedy(hf, prompt, MAX_NEW, logits_processor=processors))
    assert changed == len(PROMPTS)
    assert compared >= len(PROMPTS) * MAX_NEW // 2


def test_the_rule_for_words_and_their_spaced_spellings() -> None:
    # A word-piece tokenizer writes " hello" as its own token; a byte tokenizer spells the space.
    pieces = {"hello": [7, 8], " hello": [9, 8], "x y": [1, 2, 3], " x y": [4, 1, 2, 3], "hi": [5], " hi": [6]}
    assert bad_words_token_ids(pieces.__getitem__, ["hello", "  x y", "hi"]) == [[7, 8], [9, 8], [1, 2, 3], [5], [6]]
    sequences = [[7, 8], [5]]
    assert banned_next(sequences, []) == [5]  # a one-token word is never sampled
    assert banned_next(sequences, [1, 7]) == [8, 5]
    assert banned_next(sequences, [7, 1]) == [5]


def test_bad_words_are_checked() -> None:
    for bad in (["   "], [""], "word", [3], ["x" * 257], ["w"] * 1025):
        with pytest.raises(InvalidRequestError, match="bad_words must be a list"):
            SamplingParams(bad_words=bad)  # type: ignore[arg-type]
