"""Chosen-token logprobs in OpenAI's two shapes (completions and chat).

Workers return the log-probability of each sampled token only, so `top_logprobs` is null
(completions) or empty (chat). A token's text is its own decode, special tokens included; a
token that ends inside a multi-byte character decodes to U+FFFD.
"""

from __future__ import annotations

from typing import Any

from pdserve.services.router.api_responses import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs


def token_texts(tokenizer: Any, token_ids: list[int]) -> list[str]:
    return [str(tokenizer.decode([t], skip_special_tokens=False)) for t in token_ids]


def completion_logprobs(tokenizer: Any, token_ids: list[int], logprobs: list[float], offset: int) -> CompletionLogprobs:
    """`offset` is the character offset of the first token in the completion text (its tokens so far).

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
    return CompletionLogprobs(tokens=tokens, token_logprobs=list(logprobs), top_logprobs=None, text_offset=offsets)


def next_text_offset(tokenizer: Any, token_ids: list[int], logprobs: CompletionLogprobs) -> int:
    """The offset after the last token of `logprobs` (a stream's next chunk starts there)."""
    last_width = 0 if token_ids[-1] in _special_ids(tokenizer) else len(logprobs.tokens[-1])
    return logprobs.text_offset[-1] + last_width


def _special_ids(tokenizer: Any) -> frozenset[int]:
    # Read once per call: transformers rebuilds all_special_ids on every access.
    return frozenset(getattr(tokenizer, "all_special_ids", ()))


def chat_logprobs(tokenizer: Any, token_ids: list[int], logprobs: list[float]) -> ChatLogprobs:
    content = [
        ChatTokenLogprob(token=token, logprob=lp, bytes=list(token.encode()), top_logprobs=[])
        for token, lp in zip(token_texts(tokenizer, token_ids), logprobs, strict=True)
    ]
    return ChatLogprobs(content=content, refusal=None)
