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
            text = self._texts[token] = self._added(token, self._decode([*self._anchor, token]))
        return text

    def warm(self, vocab_size: int) -> None:
        """Every token's text in one batched decode: a constrained row that finds nothing
        allowed among its likely candidates checks the whole vocabulary, and one decode call per
        token of a 128k vocabulary takes seconds where the tokenizer's batch takes a fraction."""
        todo = [t for t in range(vocab_size) if t not in self._texts]
        if not todo:
            return
        joined = self.tokenizer.batch_decode([[*self._anchor, t] for t in todo], skip_special_tokens=True)
        for token, text in zip(todo, joined, strict=True):
            self._texts[token] = self._added(token, str(text))

    def _added(self, token: int, joined: str) -> str:
        if joined.startswith(self._anchor_text):
            return joined[len(self._anchor_text) :]
        return self._decode([token])

    def of(self, tokens: list[int]) -> str:
        return "".join(self(t) for t in tokens)

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True)) if tokens else ""
