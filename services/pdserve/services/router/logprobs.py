"""Chosen-token logprobs and their top alternatives in OpenAI's two shapes (completions and chat).

A token's text is its own decode, special tokens included; a token that ends inside a
multi-byte character decodes to U+FFFD. Completions list each token's alternatives as a map from
text to logprob (two ids with the same text keep the better one, as OpenAI's map must), or null
when none were asked for (`logprobs: 0`); chat lists them as objects, an empty list when none
were asked for.
"""

from __future__ import annotations

from typing import Any

from pdserve.protocol.top_logprobs import TopLogprobs
from pdserve.services.router.api_responses import ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs


def token_texts(tokenizer: Any, token_ids: list[int]) -> list[str]:
    return [str(tokenizer.decode([t], skip_special_tokens=False)) for t in token_ids]


class TokenTexts:
    """Token id -> its text, decoded once per request: the same alternatives come up again and again."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = str(self.tokenizer.decode([token_id], skip_special_tokens=False))
        return text


def completion_logprobs(
    tokenizer: Any,
    token_ids: list[int],
    logprobs: list[float],
    offset: int,
    top: list[TopLogprobs] | None = None,
    texts: TokenTexts | None = None,
) -> CompletionLogprobs:
    """`offset` is the character offset of the first token in the completion text (its tokens so far).
    `top` (one map per token) fills `top_logprobs`; without it that field is null.

    The completion text leaves special tokens out (it is decoded with skip_special_tokens), so a
    special token is listed in `tokens` but takes no characters: the next offset stays where it
    is, and offsets never point past the text. (A character split over several tokens still
    counts one U+FFFD per token, as vLLM's offsets do.)"""
    tokens = token_texts(tokenizer, token_ids)
    special = _special_ids(tokenizer)
    offsets = []
    for token_id, token in zip(token_ids, tokens, strict=True):
        offsets.append(offset)
        offset += 0 if token_id in special else len(token)
    top_logprobs: list[dict[str, float] | None] | None = None
    if top is not None:
        text_of = texts or TokenTexts(tokenizer)
        top_logprobs = [_by_text(alternatives, text_of) for alternatives in top]
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=list(logprobs), top_logprobs=top_logprobs, text_offset=offsets
    )


def _by_text(alternatives: TopLogprobs, text_of: TokenTexts) -> dict[str, float]:
    by_text: dict[str, float] = {}
    for token_id, logprob in alternatives.items():  # best first: the first of equal texts stays
        by_text.setdefault(text_of(token_id), logprob)
    return by_text


def prompt_logprobs(
    tokenizer: Any,
    prompt_ids: list[int],
    logprobs: list[float] | None,
    top: list[TopLogprobs] | None,
    with_top: bool,
    texts: TokenTexts | None = None,
) -> CompletionLogprobs:
    """An echoed prompt's logprobs in the completions shape: its first token has none (null, as
    OpenAI and vLLM give it), every later one its score after the tokens before it. Offsets count
    each token's own decode from 0. Scores that did not arrive (a worker older than prompt
    scoring) are null rather than made up."""
    scored = completion_logprobs(tokenizer, prompt_ids, [0.0] * len(prompt_ids), 0, None, texts)
    if logprobs is None or len(logprobs) != len(prompt_ids) - 1:
        scored.token_logprobs = [None] * len(prompt_ids)
        scored.top_logprobs = [None] * len(prompt_ids) if with_top else None
        return scored
    scored.token_logprobs = [None, *logprobs]
    if with_top:
        text_of = texts or TokenTexts(tokenizer)
        alternatives = top if top is not None and len(top) == len(logprobs) else [{} for _ in logprobs]
        scored.top_logprobs = [None, *(_by_text(t, text_of) for t in alternatives)]
    return scored


def joined(first: CompletionLogprobs, second: CompletionLogprobs | None) -> CompletionLogprobs:
    """`first` (an echoed prompt) then `second` (the completion, offsets already past the prompt)."""
    if second is None:
        return first
    top = None
    if first.top_logprobs is not None or second.top_logprobs is not None:
        top = [
            *(first.top_logprobs or [None] * len(first.tokens)),
            *(second.top_logprobs or [None] * len(second.tokens)),
        ]
    return CompletionLogprobs(
        tokens=[*first.tokens, *second.tokens],
        token_logprobs=[*first.token_logprobs, *second.token_logprobs],
        top_logprobs=top,
        text_offset=[*first.text_offset, *second.text_offset],
    )


def next_text_offset(tokenizer: Any, token_ids: list[int], logprobs: CompletionLogprobs) -> int:
    """The offset after the last token of `logprobs` (a stream's next chunk starts there)."""
    last_width = 0 if token_ids[-1] in _special_ids(tokenizer) else len(logprobs.tokens[-1])
    return logprobs.text_offset[-1] + last_width


def _special_ids(tokenizer: Any) -> frozenset[int]:
    # Read once per call: transformers rebuilds all_special_ids on every access.
    return frozenset(getattr(tokenizer, "all_special_ids", ()))


def chat_logprobs(
    tokenizer: Any,
    token_ids: list[int],
    logprobs: list[float],
    top: list[TopLogprobs] | None = None,
    texts: TokenTexts | None = None,
) -> ChatLogprobs:
    text_of = texts or TokenTexts(tokenizer)
    alternatives = top if top is not None else [{} for _ in token_ids]
    content = [
        ChatTokenLogprob(
            token=token,
            logprob=lp,
            bytes=list(token.encode()),
            top_logprobs=[
                ChatTopLogprob(token=text, logprob=alt_lp, bytes=list(text.encode()))
                for text, alt_lp in ((text_of(alt_id), alt_lp) for alt_id, alt_lp in alts.items())
            ],
        )
        for token, lp, alts in zip(token_texts(tokenizer, token_ids), logprobs, alternatives, strict=True)
    ]
    return ChatLogprobs(content=content, refusal=None)
