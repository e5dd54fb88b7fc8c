"""POST /v1/chat/completions: messages through the model's chat template, n choices, JSON or SSE."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import structlog
from fastapi import APIRouter, Request
from pdserve.errors import InvalidRequestError
from pdserve.protocol.top_logprobs import TopLogprobs, check_prompt_logprobs_size
from pdserve.sampling_params import choice_seed
from pdserve.services.router.api_requests import ChatCompletionRequest
from pdserve.services.router.api_responses import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    ChatStreamChoice,
    Usage,
)
from pdserve.services.router.choice_format import StreamedChoice, error_event, final_text, token_id_fields
from pdserve.services.router.choice_group import ChoiceGroup
from pdserve.services.router.choice_stream import ChoiceStream, TokenDelta
from pdserve.services.router.context import RouterContext
from pdserve.services.router.errors import invalid_request
from pdserve.services.router.generation import answer, usage
from pdserve.services.router.logprobs import TokenTexts, chat_logprobs
from pdserve.services.router.openapi_docs import generation_responses
from pdserve.services.router.prompt_scores import check_prompt_logprobs, prompt_scores
from pdserve.services.router.prompts import RenderOptions
from pdserve.services.router.reasoning import split_reasoning
from pdserve.services.router.reply_stream import reply_stream
from pdserve.services.router.sampling import (
    check_choices,
    check_max_tokens_limit,
    check_unsupported,
    resolve_max_tokens,
    sampling_params,
)
from pdserve.services.router.sse import DONE, sse_json
from pdserve.services.router.tool_calls import ToolPlan
from pdserve.services.router.tool_parsers import KEEPS_SPECIAL_TOKENS
from pdserve.serving.backend import GenerateRequest
from starlette.responses import Response

log = structlog.get_logger("pdserve.router.chat")


def chat_router(ctx: RouterContext) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/chat/completions",
        response_model=None,
        responses=generation_responses(ChatCompletionResponse),
        summary="Create a chat completion (OpenAI-compatible)",
    )
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        return await chat_complete(ctx, body, request)

    return router


async def chat_complete(ctx: RouterContext, body: ChatCompletionRequest, request: Request) -> Response:
    deadline = ctx.deadline()
    ctx.check_model(body.model)
    check_unsupported(body)
    check_prompt_logprobs(body.prompt_logprobs, bool(body.stream))
    if body.top_logprobs and not body.logprobs:
        raise invalid_request("top_logprobs needs logprobs: true", param="top_logprobs")
    check_choices(1, body.n, ctx.limits)
    tools = ToolPlan.of(body, ctx.tool_call_parser)
    if tools.parser in KEEPS_SPECIAL_TOKENS:  # the calls' marker is a special token: keep it in the text
        body = body.model_copy(update={"skip_special_tokens": False})
    prompt = await ctx.prompts.encode_chat(body.messages, tools.tools, RenderOptions.of(body))
    if body.truncate_prompt_tokens is not None:
        prompt = prompt[-body.truncate_prompt_tokens :]  # vLLM's: the last tokens (the workers cut alike)
    requested: int | None = body.max_tokens
    param = "max_tokens"
    if body.max_completion_tokens is not None:
        requested, param = body.max_completion_tokens, "max_completion_tokens"
        if body.max_tokens is not None:
            # The alias is then ignored, but /openapi.json bounds it all the same.
            check_max_tokens_limit(body.max_tokens, ctx.limits, "max_tokens")
    max_tokens = resolve_max_tokens(
        requested,
        len(prompt),
        ctx.max_model_len(),
        ctx.limits,
        param=param,
        prompt_param="messages",
        cap=ctx.max_tokens_cap(),
    )

    response_id = f"chatcmpl-{uuid.uuid4().hex}"
    requests = [
        (
            0,
            GenerateRequest(
                f"{response_id}-{j}",
                prompt,
                sampling_params(
                    body,
                    max_tokens,
                    choice_seed(body.seed, j),
                    bool(body.logprobs),
                    body.top_logprobs or 0,
                    response_format=body.response_format,
                    tool_schema=tools.schema,
                    defaults=ctx.sampling_defaults,
                    reasoning_parser=ctx.reasoning_parser,
                ),
                deadline,
            ),
        )
        for j in range(body.n)
    ]
    if body.prompt_logprobs is not None:
        try:
            check_prompt_logprobs_size(len(prompt), requests[0][1].params)
        except InvalidRequestError as exc:
            raise invalid_request(str(exc), param="prompt_logprobs") from None
    ctx.metrics.prompt_tokens += len(prompt)
    log.info("chat completion", id=response_id, prompt_tokens=len(prompt), n=body.n, stream=bool(body.stream))

    # A forced tool call's grammar holds from the first token, so its reply has no thinking to
    # split off; other grammars hold after the thinking (engine/thinking_grammar.py).
    reasoning = None if tools.forced else ctx.reasoning_parser
    fmt = _Format(ctx, body, response_id, tools, reasoning)
    group = ChoiceGroup.start(ctx.backend, requests, ctx.metrics)
    return await answer(ctx, request, group, stream=bool(body.stream), events=fmt.events, body=fmt.body)


class _Format:
    """Turns the choices of one request into the response body or its stream chunks."""

    def __init__(
        self, ctx: RouterContext, body: ChatCompletionRequest, response_id: str, tools: ToolPlan, reasoning: str | None
    ) -> None:
        self.ctx = ctx
        self.tools = tools
        self.reasoning = reasoning  # the reasoning parser, if the thinking is split off (reasoning.py)
        self.request = body
        self.id = response_id
        self.created = int(time.time())
        self.want_logprobs = bool(body.logprobs)
        self.want_top = bool(body.top_logprobs)
        self.texts = TokenTexts(ctx.tokenizer)
        options = body.stream_options
        self.include_usage = bool(options and options.include_usage)
        # vLLM's: every chunk carries the usage so far (only with include_usage, as in vLLM)
        self.continuous_usage = bool(options and options.include_usage and options.continuous_usage_stats)
        self.generated = 0  # tokens of the deltas streamed so far, all choices

    def body(self, group: ChoiceGroup) -> ChatCompletionResponse:
        choices = []
        for c in group.choices:
            text = final_text(self.ctx.tokenizer, c)
            thinking, text = split_reasoning(self.reasoning, text) if self.reasoning else (None, text)
            content, calls, finish_reason = self.tools.reply(text, c.finish_reason)
            # Unset fields stay out of the body: tool_calls and reasoning_content appear only when there are some.
            fields: dict[str, Any] = {} if calls is None else {"tool_calls": calls}
            if thinking is not None:
                fields["reasoning_content"] = thinking
            if thinking is not None and not content:
                content = None  # all thinking, no answer (vLLM's shape)
            message = ChatMessageOut(role="assistant", content=content, **fields)
            choices.append(
                ChatChoice(
                    index=c.index,
                    message=message,
                    logprobs=self._logprobs(c.token_ids, c.logprobs, c.top_logprobs),
                    finish_reason=finish_reason,  # type: ignore[arg-type]
                    stop_reason=c.stop_reason,
                    **token_id_fields(self.request.return_token_ids, c, c.token_ids, with_prompt=True),
                )
            )
        # vLLM's place for them in chat: the response's, the prompt being every choice's.
        scores: dict[str, Any] = {}
        if self.request.prompt_logprobs is not None:
            scores["prompt_logprobs"] = prompt_scores(group.choices[0], self.texts)
        return ChatCompletionResponse(
            id=self.id,
            object="chat.completion",
            created=self.created,
            model=self.ctx.model_name,
            choices=choices,
            usage=usage(group),
            # vLLM's place for them in chat: the response's, the prompt being every choice's.
            **(
                {"prompt_logprobs": prompt_scores(group.choices[0], self.texts)}
                if self.request.prompt_logprobs is not None
                else {}
            ),
        )

    async def events(self, group: ChoiceGroup) -> AsyncGenerator[bytes, None]:
        streamed = {
            c.index: StreamedChoice(self.ctx.tokenizer, self.request.stop, self.request.skip_special_tokens)
            for c in group.choices
        }
        replies = {c.index: reply_stream(self.tools, self.reasoning) for c in group.choices}
        extras = self.want_logprobs or bool(self.request.return_token_ids)
        try:
            try:
                # OpenAI opens every choice with the role and empty content (or, for a named
                # tool call, the call's id and name, its arguments to follow).
                for c in group.choices:
                    opening = replies[c.index].opening()
                    opening_choice = ChatStreamChoice(index=c.index, delta=opening, logprobs=None, finish_reason=None)
                    yield self._chunk(group, opening_choice)
                while (item := await group.next()) is not None:
                    choice, delta = item
                    self.generated += len(delta.token_ids)
                    state, reply = streamed[choice.index], replies[choice.index]
                    deltas = reply.push(state.text_for(delta))
                    finish: str | None = None
                    if delta.finish_reason is not None:
                        tail, finish = reply.finish(delta.finish_reason)
                        deltas += tail
                    if not deltas and (extras or (reply.chunk_every_batch and delta.token_ids)):
                        deltas = [reply.empty()]  # a chunk per token batch: it carries logprobs and ids
                    for k, out in enumerate(deltas):
                        yield self._chunk(group, self._stream_choice(choice, delta, out, state, first=k == 0))
                    if finish is not None:
                        yield self._chunk(
                            group,
                            ChatStreamChoice(
                                index=choice.index,
                                delta=ChatDelta(),
                                logprobs=None,
                                finish_reason=finish,  # type: ignore[arg-type]
                                stop_reason=choice.stop_reason,
                            ),
                        )
                if self.include_usage:
                    yield sse_json(self._response([], usage=usage(group)).model_dump_json(exclude_unset=True))
            except Exception as exc:
                yield error_event(exc)
            yield DONE
        finally:
            await group.aclose()

    def _stream_choice(
        self, choice: ChoiceStream, delta: TokenDelta, out: ChatDelta, state: StreamedChoice, *, first: bool
    ) -> ChatStreamChoice:
        """One chunk's choice; a token batch's logprobs and ids ride on its first chunk."""
        if not first:
            return ChatStreamChoice(index=choice.index, delta=out, logprobs=None, finish_reason=None)
        fields = token_id_fields(
            self.request.return_token_ids, choice, delta.token_ids, with_prompt=not state.sent_prompt_ids
        )
        state.sent_prompt_ids = True
        return ChatStreamChoice(
            index=choice.index,
            delta=out,
            logprobs=self._logprobs(delta.token_ids, delta.logprobs, delta.top_logprobs),
            finish_reason=None,
            **fields,
        )

    def _chunk(self, group: ChoiceGroup, choice: ChatStreamChoice) -> bytes:
        extra: dict[str, Any] = {}
        if self.include_usage:
            extra["usage"] = self._usage_so_far(group) if self.continuous_usage else None
        return sse_json(self._response([choice], **extra).model_dump_json(exclude_unset=True))

    def _usage_so_far(self, group: ChoiceGroup) -> Usage:
        """Usage with the tokens of the deltas taken so far (vLLM's continuous usage stats)."""
        counted = usage(group)
        counted.completion_tokens = self.generated
        counted.total_tokens = counted.prompt_tokens + self.generated
        return counted

    def _response(self, choices: list[ChatStreamChoice], **extra: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.ctx.model_name,
            choices=choices,
            **extra,
        )

    def _logprobs(
        self, token_ids: list[int], logprobs: list[float] | None, top: list[TopLogprobs] | None
    ) -> ChatLogprobs | None:
        if not self.want_logprobs or logprobs is None or len(logprobs) != len(token_ids):
            return None
        if not self.want_top or top is None or len(top) != len(token_ids):
            top = None
        return chat_logprobs(self.ctx.tokenizer, token_ids, logprobs, top, self.texts)
