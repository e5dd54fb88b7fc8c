"""Which tokens a grammar-bound row may take next (JSON mode, schemas, choices, regexes).

`allowed(token)` feeds the token's text to the grammar's state, with the state after each first
character found once (most refused tokens fail at it); a row whose likely tokens include an
allowed one needs nothing more. A row whose likely tokens are all refused needs the best allowed
token of the whole vocabulary: `allowed_mask()` checks every token whose first character the
state takes, once per distinct state, and keeps the mask in the engine's `MaskCache`, since the
same states come back (inside a string, between an object's members, ...) step after step and
request after request (docs/engine.md, docs/benchmarks.md).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch

from pdserve.engine.token_texts import TokenTexts

if TYPE_CHECKING:
    from pdserve.engine.sequence import Grammar

MASK_CACHE_BYTES = 64 << 20  # bool masks of the vocabulary kept at most


class MaskCache:
    """The allowed-token masks of recently seen grammar states, least recently used out first."""

    def __init__(self, vocab_size: int) -> None:
        self.capacity = max(16, MASK_CACHE_BYTES // max(vocab_size, 1))
        self._masks: OrderedDict[object, tuple[object, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: object) -> torch.Tensor | None:
        entry = self._masks.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._masks.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: object, owner: object, mask: torch.Tensor) -> None:
        # The owner (a compiled schema or regex whose id is in the key) stays alive with the
        # entry, so no other object can take that id and meet this mask.
        self._masks[key] = (owner, mask)
        if len(self._masks) > self.capacity:
            self._masks.popitem(last=False)


class GrammarConstraint:
    def __init__(
        self, state: Grammar, texts: TokenTexts, eos: frozenset[int], vocab_size: int, cache: MaskCache | None = None
    ) -> None:
        self.state = state
        self.texts = texts
        self.eos = eos  # eos ids the row may take (where the output may end)
        self.vocab_size = vocab_size
        self.cache = cache if cache is not None else MaskCache(vocab_size)
        self._after_first: dict[str, Grammar | None] = {}

    def __call__(self, token: int) -> bool:
        text = self.texts(token)
        if not text:  # special tokens add no text
            return token in self.eos
        return self._text_allowed(text)

    def allowed_mask(self) -> torch.Tensor:
        """Bool [vocab_size]: every token this row may take."""
        owner, key = self.state.mask_key
        mask = self.cache.get(key)
        if mask is None:
            mask = self._text_mask()
            self.cache.put(key, owner, mask)
        eos = [t for t in self.eos if t < self.vocab_size]
        if eos:
            mask = mask.clone()
            mask[eos] = True
        return mask

    def _text_mask(self) -> torch.Tensor:
        """The tokens with text that the state takes: checked only where the first character is."""
        chars, index = self.texts.first_chars(self.vocab_size)
        takes = torch.tensor([self._after(c) is not None for c in chars] + [False], dtype=torch.bool)
        candidates = takes[index].nonzero().flatten().tolist()
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        allowed = [t for t in candidates if self._text_allowed(self.texts(t))]
        if allowed:
            mask[allowed] = True
        return mask

    def _text_allowed(self, text: str) -> bool:
        after = self._after(text[0])
        return after is not None and (len(text) == 1 or after.feed(text[1:]) is not None)

    def _after(self, char: str) -> Grammar | None:
        if char not in self._after_first:
            self._after_first[char] = self.state.feed(char)
        return self._after_first[char]
