"""What each token adds to the output text, for checking candidate tokens against a grammar.

Decoding one token alone is wrong for SentencePiece tokenizers (a word-initial piece loses its
space at the start of a text), so a token's text is what it adds after an ordinary anchor
token. Special tokens add nothing (the output text leaves them out). Cached per token: the same
candidates come up step after step.
"""

from __future__ import annotations

from typing import Any

import torch


class TokenTexts:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        ids = list(tokenizer.encode("a", add_special_tokens=False))
        self._anchor = ids[-1:]
        self._anchor_text = self._decode(self._anchor)
        self._texts: dict[int, str] = {}
        self._first: tuple[list[str], torch.Tensor] | None = None

    def __call__(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self._added(token, self._decode([*self._anchor, token]))
        return text

    def first_chars(self, vocab_size: int) -> tuple[list[str], torch.Tensor]:
        """The distinct first characters of the vocabulary's token texts, and per token id the
        index of its own (-1: no text, or an id past the tokenizer). Found once, on the first
        grammar-bound row that looks past its likely tokens."""
        if self._first is None or len(self._first[1]) != vocab_size:
            chars: dict[str, int] = {}
            index = torch.full((vocab_size,), -1, dtype=torch.long)
            known = min(vocab_size, len(self.tokenizer))
            for token in range(known):
                text = self(token)
                if text:
                    index[token] = chars.setdefault(text[0], len(chars))
            self._first = (list(chars), index)
        return self._first

    def _added(self, token: int, joined: str) -> str:
        if joined.startswith(self._anchor_text):
            return joined[len(self._anchor_text) :]
        return self._decode([token])

    def of(self, tokens: list[int]) -> str:
        return "".join(self(t) for t in tokens)

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True)) if tokens else ""
