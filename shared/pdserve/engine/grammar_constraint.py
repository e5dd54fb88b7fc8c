"""Which tokens a grammar-bound row may take next (JSON mode, schemas, choices, regexes).

`allowed(token)` feeds the token's text to the grammar's state, with the state after each first
character found once (most refused tokens fail at it). When none of a row's likely tokens is
allowed, the sampler must look through the whole vocabulary; `candidates()` narrows that to the
tokens whose first character the state takes, as one tensor mask, so the scan checks a few
percent of a real vocabulary instead of all of it (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pdserve.engine.token_texts import TokenTexts

if TYPE_CHECKING:
    from pdserve.engine.sequence import Grammar


class GrammarConstraint:
    def __init__(self, state: Grammar, texts: TokenTexts, eos: frozenset[int], vocab_size: int) -> None:
        self.state = state
        self.texts = texts
        self.eos = eos  # eos ids the row may take (where the output may end)
        self.vocab_size = vocab_size
        self._after_first: dict[str, Grammar | None] = {}

    def __call__(self, token: int) -> bool:
        text = self.texts(token)
        if not text:  # special tokens add no text
            return token in self.eos
        after = self._after(text[0])
        return after is not None and (len(text) == 1 or after.feed(text[1:]) is not None)

    def candidates(self) -> torch.Tensor:
        """Bool [vocab_size]: the tokens that may be allowed (every allowed one is among them)."""
        chars, index = self.texts.first_chars(self.vocab_size)
        # One slot per distinct first character, and a last one (index -1) for tokens without text.
        takes = torch.tensor([self._after(c) is not None for c in chars] + [False], dtype=torch.bool)
        mask = takes[index]
        eos = [t for t in self.eos if t < self.vocab_size]
        if eos:
            mask[eos] = True
        return mask

    def _after(self, char: str) -> Grammar | None:
        if char not in self._after_first:
            self._after_first[char] = self.state.feed(char)
        return self._after_first[char]
