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
    """`offset` is the character offset of the first token in the completion text (its tokens so far)."""
    tokens = token_texts(tokenizer, token_ids)
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return CompletionLogprobs(tokens=tokens, token_logprobs=list(logprobs), top_logprobs=None, text_offset=offsets)


def chat_logprobs(tokenizer: Any, token_ids: list[int], logprobs: list[float]) -> ChatLogprobs:
    content = [
        ChatTokenLogprob(token=token, logprob=lp, bytes=list(token.encode()), top_logprobs=[])
        for token, lp in zip(token_texts(tokenizer, token_ids), logprobs, strict=True)
    ]
    return ChatLogprobs(content=content, refusal=None)
