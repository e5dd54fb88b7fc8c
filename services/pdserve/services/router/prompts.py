"""Prompts to token ids: plain text, token ids as given, and chat messages through the model's template.

Tokenizing a long prompt or rendering a chat template takes milliseconds of CPU, which must not
stall the event loop that streams everyone else's tokens, so both run on one dedicated thread.
One thread, because a Hugging Face tokenizer is not guaranteed to be safe to call from several
threads at once; encoding is fast enough that one thread keeps up with any GPU's prefill.

A short prompt is encoded on the event loop instead, when the thread has nothing queued (so
the tokenizer is still never used by two threads at once): the hand-off to the thread and back
costs about 0.3 ms of latency, while encoding 512 characters costs under 0.2 ms of CPU
(measured on the built-in model's tokenizer; docs/benchmarks.md, router overhead).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jinja2
from pdserve.services.router.api_requests import AssistantMessage, ChatMessage, ChatTemplateFields, ToolMessage
from pdserve.services.router.errors import ApiError, invalid_request

# Text parts of one message are joined like vLLM does, so templates that expect string content work.
PART_SEPARATOR = "\n"
# Prompts (or conversations, all contents together) up to this many characters are encoded on
# the event loop: cheaper than the thread hand-off, and short enough not to delay other streams.
INLINE_MAX_CHARS = 512


class PromptTokenizer:
    def __init__(self, tokenizer: Any, chat_template: str | None = None) -> None:
        """`chat_template` (the template text; None: the tokenizer's own) renders conversations."""
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdserve-tokenize")
        self._queued = 0  # jobs submitted to the thread and not finished; changed on the loop only
        self._encode = fast_encoder(tokenizer) or (lambda text: list(tokenizer(text, verbose=False).input_ids))

    async def encode(self, text: str, param: str = "prompt") -> list[int]:
        """Token ids of `text` exactly as the engine's own `tokenize` would produce them."""
        if not text:
            raise invalid_request(f"{param} is empty", param=param)
        # verbose=False: a prompt longer than the model's context is refused by the caller with a
        # clear 400; transformers' own warning about it would only add noise to the logs.
        ids = await self._run(lambda: self._encode(text), len(text))
        if not ids:
            raise invalid_request(f"{param} has no tokens", param=param)
        return ids

    async def encode_chat(
        self,
        messages: Sequence[ChatMessage],
        tools: list[dict[str, Any]] | None = None,
        options: RenderOptions | None = None,
    ) -> list[int]:
        """Token ids of the conversation rendered by the chat template, ending with the assistant's
        turn (unless `options` say otherwise); `tools` (OpenAI's tool definitions) go to the
        template, which decides how to show them."""
        conversation = [_message_dict(m) for m in messages]
        options = options or RenderOptions()

        def render() -> list[int]:
            try:
                ids = self.tokenizer.apply_chat_template(
                    conversation,
                    tools=tools,
                    chat_template=self.chat_template,
                    add_generation_prompt=options.add_generation_prompt,
                    continue_final_message=options.continue_final_message,
                    tokenize=True,
                    return_dict=False,
                    **options.template_kwargs,
                )
            except (jinja2.TemplateError, TypeError) as exc:
                # Templates reject conversations they cannot render (roles out of order, ...), and
                # template variables of types they cannot use (chat_template_kwargs).
                raise invalid_request(f"messages: the chat template refused them: {exc}", param="messages") from None
            except ValueError as exc:
                if self.chat_template is None and getattr(self.tokenizer, "chat_template", None) is None:
                    raise ApiError(
                        400,
                        "this model has no chat template; use /v1/completions, or start the router with "
                        "--chat-template FILE",
                    ) from None
                raise invalid_request(f"messages: {exc}", param="messages") from None
            return [int(t) for t in ids]

        ids = await self._run(render, sum(len(m["content"]) for m in conversation))
        if not ids:
            raise invalid_request("messages render to an empty prompt", param="messages")
        return ids

    async def encode_plain(self, text: str) -> list[int]:
        """Token ids of `text` without the tokenizer's special tokens (no BOS)."""
        return await self._run(
            lambda: [int(t) for t in self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids], len(text)
        )

    async def decode(self, token_ids: list[int]) -> str:
        """The text of `token_ids`, special tokens included (what /detokenize returns)."""
        return await self._run(lambda: str(self.tokenizer.decode(token_ids, skip_special_tokens=False)), len(token_ids))

    async def _run(self, fn: Any, chars: int) -> Any:
        if chars <= INLINE_MAX_CHARS and self._queued == 0:
            return fn()
        loop = asyncio.get_running_loop()
        job = self._executor.submit(fn)
        self._queued += 1
        # Counted down when the job has finished on the thread, even if our caller was cancelled
        # meanwhile: only then may the loop use the tokenizer itself.
        job.add_done_callback(lambda _: _call_soon(loop, self._job_done))
        return await asyncio.wrap_future(job)

    def _job_done(self) -> None:
        self._queued -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# apply_chat_template's own parameters: a template variable of the same name would replace them.
_RENDER_PARAMETERS = frozenset(
    {
        "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
        "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors",
        "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How a conversation is rendered: vLLM's add_generation_prompt, continue_final_message and
    chat_template_kwargs."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, body: ChatTemplateFields) -> RenderOptions:
        """The request's options; 400 for a combination the template cannot render."""
        if body.add_generation_prompt and body.continue_final_message:
            raise invalid_request(
                "continue_final_message needs add_generation_prompt false: the reply either continues the last "
                "message or starts a new turn",
                param="continue_final_message",
            )
        kwargs = dict(body.chat_template_kwargs or {})
        taken = sorted(_RENDER_PARAMETERS & set(kwargs))
        if taken:
            raise invalid_request(
                f"chat_template_kwargs: {', '.join(taken)} are set by the request itself, not by template variables",
                param="chat_template_kwargs",
            )
        return cls(body.add_generation_prompt, body.continue_final_message, kwargs)


def fast_encoder(tokenizer: Any) -> Callable[[str], list[int]] | None:
    """The Rust tokenizer's own `encode`, when it gives exactly what `tokenizer(text).input_ids` gives.

    For a fast tokenizer that call is a Python layer (argument checks, truncation and padding
    set on the backend, a batch of one, a BatchEncoding) around the backend's encode: about
    three quarters of its time for a short prompt. Used only when the class does not override
    that layer, the backend neither truncates nor pads, and probe texts (special tokens,
    Unicode, whitespace) come out the same both ways; otherwise None and the full call is used.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    if not isinstance(tokenizer, TokenizersBackend) or backend is None:
        return None
    if type(tokenizer)._encode_plus is not TokenizersBackend._encode_plus:
        return None
    probes = ["hello world", "  two  spaces\n\tand a tab ", "héllo wörld, 世界 🙂", "x" * 300]
    probes += [f"{t} mid {t}" for t in getattr(tokenizer, "all_special_tokens", [])[:4]]
    try:
        expected = [list(tokenizer(p, verbose=False).input_ids) for p in probes]  # also sets the backend's state
        if backend.truncation is not None or backend.padding is not None:
            return None

        def encode(text: str) -> list[int]:
            return list(backend.encode(text, add_special_tokens=True).ids)

        if [encode(p) for p in probes] != expected:
            return None
    except Exception:  # an unusual tokenizer: the full call is always right
        return None
    return encode


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is left to count
        loop.call_soon_threadsafe(fn)


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    content = message.content
    if content is None:
        content = ""  # an assistant turn without content; other roles must have it (api_requests.py)
    elif not isinstance(content, str):
        content = PART_SEPARATOR.join(part.text for part in content)
    # OpenAI's newer "developer" role means what "system" means to every open model's template.
    role = "system" if message.role == "developer" else message.role
    rendered: dict[str, Any] = {"role": role, "content": content}
    if isinstance(message, ToolMessage):
        rendered["tool_call_id"] = message.tool_call_id
    if isinstance(message, AssistantMessage) and message.reasoning_content is not None:
        rendered["reasoning_content"] = message.reasoning_content  # Qwen3's template reads it
    if isinstance(message, AssistantMessage) and message.tool_calls:
        rendered["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)},
            }
            for call in message.tool_calls
        ]
    return rendered


def _arguments(text: str) -> Any:
    """A call's arguments as the object they encode: templates write them with `tojson`, as vLLM
    hands them over; text that is not a JSON object stays text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text
