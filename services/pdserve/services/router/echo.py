"""Completions' `echo`: each choice's prompt, returned ahead of its completion.

The text goes back as the client sent it (a token-id prompt decoded without special tokens, as
completion text is); a prompt cut by truncate_prompt_tokens goes back as its kept tokens' text.
With `logprobs` the prompt comes scored (the workers computed its `prompt_logprobs` during
prefill; logprobs.prompt_logprobs puts them in OpenAI's shape).
"""

from __future__ import annotations

from typing import Any

from pdserve.services.router.api_requests import CompletionRequest
from pdserve.services.router.api_responses import CompletionLogprobs
from pdserve.services.router.choice_stream import ChoiceStream
from pdserve.services.router.logprobs import TokenTexts, prompt_logprobs


class Echo:
    def __init__(
        self,
        tokenizer: Any,
        body: CompletionRequest,
        prompts: list[list[int]],
        texts: TokenTexts,
        truncated: list[bool],
    ) -> None:
        """`truncated[i]`: prompt i lost its start to truncate_prompt_tokens (its kept tokens are echoed)."""
        items = [body.prompt] if isinstance(body.prompt, str) or isinstance(body.prompt[0], int) else body.prompt
        self.prompt_texts = [
            item if isinstance(item, str) and not cut else str(tokenizer.decode(ids, skip_special_tokens=True))
            for item, ids, cut in zip(items, prompts, truncated, strict=True)
        ]
        self.tokenizer = tokenizer
        self.scored = body.logprobs is not None
        self.with_top = bool(body.logprobs)
        self.texts = texts

    def of(self, choice: ChoiceStream) -> tuple[str, CompletionLogprobs | None]:
        """The choice's prompt text, and its logprobs when logprobs were asked for."""
        text = self.prompt_texts[choice.prompt_index]
        if not self.scored:
            return text, None
        scores = prompt_logprobs(
            self.tokenizer,
            choice.prompt_token_ids,
            choice.prompt_logprobs,
            choice.prompt_top_logprobs,
            self.with_top,
            self.texts,
        )
        return text, scores
