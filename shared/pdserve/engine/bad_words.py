"""vLLM's `bad_words`: words a request's output must never contain, as token sequences.

A word is banned as the model would write it: its tokens on their own, and also its tokens after
a space when that spelling is a word of its own (a different first token and as many tokens;
otherwise the space became a token by itself, and banning that sequence would ban spaces). At
each step a sequence's last token is ruled out when the output ends with the tokens before it,
so a one-token word is never sampled. Only the output is matched, not the prompt, as in vLLM.
"""

from __future__ import annotations

from collections.abc import Callable


def bad_words_token_ids(encode: Callable[[str], list[int]], words: list[str]) -> list[list[int]]:
    """Token sequences to ban for `words`; `encode` tokenizes without special tokens."""
    sequences: list[list[int]] = []
    for word in words:
        bare = encode(word.lstrip())
        if not bare:
            continue
        sequences.append(bare)
        spaced = encode(" " + word.lstrip())
        if spaced and spaced[0] != bare[0] and len(spaced) == len(bare):
            sequences.append(spaced)
    return sequences


def banned_next(sequences: list[list[int]], output: list[int]) -> list[int]:
    """The tokens that would complete one of `sequences` if sampled after `output`."""
    banned = []
    for tokens in sequences:
        prefix = len(tokens) - 1
        if prefix == 0 or (len(output) >= prefix and output[-prefix:] == tokens[:-1]):
            banned.append(tokens[-1])
    return banned
