"""What the completions and chat formats share: final text, token id fields, stream state, error events."""

from __future__ import annotations

from typing import Any

import structlog
from pdserve.services.router.choice_stream import ChoiceStream, TokenDelta
from pdserve.services.router.detokenizer import StreamDetokenizer
from pdserve.services.router.errors import ApiError, internal_error
from pdserve.services.router.sse import sse_event

log = structlog.get_logger("pdserve.router.stream")


def final_text(tokenizer: Any, choice: ChoiceStream) -> str:
    """The worker's final text (cut at a stop string); decoded here if a backend sent none."""
    if choice.text is not None:
        return choice.text
    skip = choice.request.params.skip_special_tokens
    return str(tokenizer.decode(choice.token_ids, skip_special_tokens=skip))


def token_id_fields(
    wanted: bool | None, choice: ChoiceStream, token_ids: list[int], *, with_prompt: bool
) -> dict[str, Any]:
    """vLLM's `return_token_ids` fields of a choice: its (new) token ids, and its prompt's ids once."""
    if not wanted:
        return {}
    fields: dict[str, Any] = {"token_ids": list(token_ids)}
    if with_prompt:
        fields["prompt_token_ids"] = list(choice.prompt_token_ids)
    return fields


class StreamedChoice:
    """One choice as streamed so far: its detokenizer, the character offset of its next token
    (completions logprobs) and whether its prompt ids went out (`return_token_ids`)."""

    def __init__(self, tokenizer: Any, stop: str | list[str] | None, skip_special_tokens: bool = True) -> None:
        self.detokenizer = StreamDetokenizer(tokenizer, [stop] if isinstance(stop, str) else stop, skip_special_tokens)
        self.token_text_offset = 0
        self.sent_prompt_ids = False
        self.sent_echo = False  # completions' `echo`: the prompt went out ahead of the first tokens

    def text_for(self, delta: TokenDelta) -> str:
        """The text to send for this delta: what is safe so far, or all the rest on the last one."""
        if delta.finish_reason is None:
            return self.detokenizer.push(delta.token_ids)
        return self.detokenizer.finish(delta.token_ids, delta.text)


def error_event(exc: Exception) -> bytes:
    """The SSE event for a failure after the stream started: the HTTP status is long gone, so the
    error travels in OpenAI's error shape as a data event (the openai client raises on it)."""
    if isinstance(exc, ApiError):
        return sse_event(exc.body())
    log.exception("stream failed", exc_info=exc)
    return sse_event(internal_error().body())
