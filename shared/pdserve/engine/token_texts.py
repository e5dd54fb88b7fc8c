"""What each token adds to the output text, for checking candidate tokens against a grammar.

Decoding one token alone is wrong for SentencePiece tokenizers (a word-initial piece loses its
space at the start of a text), so a token's text is what it adds after an ordinary anchor
token. Special tokens add nothing (the output text leaves them out). Cached per token: the same
candidates come up step after step.
"""

from __future__ import annotations

from typing import Any


class TokenTexts:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        ids = list(tokenizer.encode("a", add_special_tokens=False))
        self._anchor = ids[-1:]
        self._anchor_text = self._decode(self._anchor)
        self._texts: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            joined = self._decode([*self._anchor, token])
            anchored = joined.startswith(self._anchor_text)
            text = self._texts[token] = joined[len(self._anchor_text) :] if anchored else self._decode([token])
        return text

    def of(self, tokens: list[int]) -> str:
        return "".join(self(t) for t in tokens)

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True)) if tokens else ""
