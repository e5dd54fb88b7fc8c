"""POST /v1/completions: prompts (text or token ids) x n choices, as one JSON body or an SSE stream."""

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
from pdserve.services.router.api_requests import DEFAULT_MAX_TOKENS, CompletionRequest, TokenId
from pdserve.services.router.api_responses import CompletionChoice, CompletionLogprobs, CompletionResponse, Usage
from pdserve.services.router.choice_format import StreamedChoice, error_event, final_text, token_id_fields
from pdserve.services.router.choice_group import ChoiceGroup
from pdserve.services.router.choice_stream import ChoiceStream, TokenDelta
from pdserve.services.router.context import RouterContext
from pdserve.services.router.echo import Echo
from pdserve.services.router.errors import invalid_request
from pdserve.services.router.generation import answer, usage
from pdserve.services.router.logprobs import TokenTexts, completion_logprobs, joined, next_text_offset
from pdserve.services.router.openapi_docs import generation_responses
from pdserve.services.router.prompt_scores import check_prompt_logprobs, prompt_scores
from pdserve.services.router.sampling import (
    check_choices,
    check_unsupported,
    resolve_max_tokens,
    sampling_params,
)
from pdserve.services.router.sse import DONE, sse_json
from pdserve.serving.backend import GenerateRequest
from starlette.responses import Response

log = structlog.get_logger("pdserve.router.completions")


def completions_router(ctx: RouterContext) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/completions",
        response_model=None,
        responses=generation_responses(CompletionResponse),
        summary="Create a completion (OpenAI-compatible)",
    )
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        return await complete(ctx, body, request)

    return router


async def complete(ctx: RouterContext, body: CompletionRequest, request: Request) -> Response:
    deadline = ctx.deadline()
    ctx.check_model(body.model)
    check_unsupported(body)
    check_prompt_logprobs(
        body.prompt_logprobs, bool(body.stream), echo_scores=bool(body.echo) and body.logprobs is not None
    )
    if body.suffix is not None:
        raise invalid_request("suffix: not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise invalid_request("best_of: only null or equal to n is supported", param="best_of")
    prompts = await _prompt_ids(ctx, body.prompt)
    cut = body.truncate_prompt_tokens
    truncated = [cut is not None and len(ids) > cut for ids in prompts]
    if cut is not None:
        prompts = [ids[-cut:] for ids in prompts]  # vLLM's: the last tokens (the workers cut alike)
    check_choices(len(prompts), body.n, ctx.limits)

    response_id = f"cmpl-{uuid.uuid4().hex}"
    want_logprobs = body.logprobs is not None
    requests: list[tuple[int, GenerateRequest]] = []
    # Left out, max_tokens is OpenAI's 16, but a server limit or a long prompt may leave less room.
    explicit = "max_tokens" in body.model_fields_set
    requested = body.max_tokens if explicit else None
    if requested == 0:
        if not body.echo:
            raise invalid_request("max_tokens must be at least 1 (0 only with echo: the prompt alone)", "max_tokens")
        # The prompt alone, as OpenAI and vLLM answer it: the workers score it while computing
        # one token, which the answer leaves out.
        requested = 1
    default = None if explicit else DEFAULT_MAX_TOKENS
    for prompt_index, ids in enumerate(prompts):
        max_tokens = resolve_max_tokens(
            requested, len(ids), ctx.max_model_len(), ctx.limits, default=default, cap=ctx.max_tokens_cap()
        )
        for j in range(body.n):
            params = sampling_params(
                body,
                max_tokens,
                choice_seed(body.seed, j),
                want_logprobs,
                body.logprobs or 0,
                response_format=body.response_format,
                defaults=ctx.sampling_defaults,
            )
            if body.echo and want_logprobs:
                params.prompt_logprobs = body.logprobs  # the echoed prompt comes with its logprobs
            if params.prompt_logprobs is not None:
                try:
                    check_prompt_logprobs_size(len(ids), params)
                except InvalidRequestError as exc:
                    param = "prompt_logprobs" if body.prompt_logprobs is not None else "logprobs"
                    raise invalid_request(str(exc), param=param) from None
            requests.append((prompt_index, GenerateRequest(f"{response_id}-{len(requests)}", ids, params, deadline)))
    ctx.metrics.prompt_tokens += sum(len(ids) for ids in prompts)
    log.info("completion", id=response_id, prompts=len(prompts), n=body.n, stream=bool(body.stream))

    fmt = _Format(ctx, body, response_id, prompts, truncated)
    group = ChoiceGroup.start(ctx.backend, requests, ctx.metrics)
    return await answer(ctx, request, group, stream=bool(body.stream), events=fmt.events, body=fmt.body)


async def _prompt_ids(
    ctx: RouterContext, prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
) -> list[list[int]]:
    # The schema has made sure that no prompt and no list of them is empty.
    if isinstance(prompt, str):
        return [await ctx.prompts.encode(prompt)]
    if isinstance(prompt[0], int):
        return [list(prompt)]
    prompts: list[list[int]] = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            prompts.append(await ctx.prompts.encode(item, param=f"prompt.{i}"))
        else:
            prompts.append(list(item))  # type: ignore[arg-type]
    return prompts


class _Format:
    """Turns the choices of one request into the response body or its stream chunks."""

    def __init__(
        self,
        ctx: RouterContext,
        body: CompletionRequest,
        response_id: str,
        prompts: list[list[int]],
        truncated: list[bool],
    ) -> None:
        self.ctx = ctx
        self.request = body
        self.id = response_id
        self.created = int(time.time())
        self.want_logprobs = body.logprobs is not None
        self.want_top = bool(body.logprobs)
        self.texts = TokenTexts(ctx.tokenizer)
        self.echo = Echo(ctx.tokenizer, body, prompts, self.texts, truncated) if body.echo else None
        options = body.stream_options
        self.include_usage = bool(options and options.include_usage)
        # vLLM's: every chunk carries the usage so far (only with include_usage, as in vLLM)
        self.continuous_usage = bool(options and options.include_usage and options.continuous_usage_stats)
        self.generated = 0  # tokens of the deltas streamed so far, all choices
        self.prompt_only = bool(body.echo) and body.max_tokens == 0

    def body(self, group: ChoiceGroup) -> CompletionResponse:
        choices = []
        for c in group.choices:
            echo = self._echo_of(c)
            token_ids = [] if self.prompt_only else c.token_ids
            text = "" if self.prompt_only else final_text(self.ctx.tokenizer, c)
            logprobs = self._logprobs(token_ids, c.logprobs, len(echo[0]) if echo else 0, c.top_logprobs)
            fields: dict[str, Any] = {
                "index": c.index,
                "text": echo[0] + text if echo else text,
                "logprobs": joined(echo[1], logprobs) if echo and echo[1] else logprobs,
                "finish_reason": "length" if self.prompt_only else c.finish_reason,
                "stop_reason": None if self.prompt_only else c.stop_reason,
            }
            if self.request.prompt_logprobs is not None:
                fields["prompt_logprobs"] = prompt_scores(c, self.texts)
            choices.append(
                CompletionChoice(
                    **fields, **token_id_fields(self.request.return_token_ids, c, token_ids, with_prompt=True)
                )
            )
        return self._response(choices, usage=self._usage(group))

    async def events(self, group: ChoiceGroup) -> AsyncGenerator[bytes, None]:
        streamed = {
            c.index: StreamedChoice(self.ctx.tokenizer, self.request.stop, self.request.skip_special_tokens)
            for c in group.choices
        }
        extras = self.want_logprobs or bool(self.request.return_token_ids)
        try:
            try:
                while (item := await group.next()) is not None:
                    choice, delta = item
                    self.generated += len(delta.token_ids)
                    state = streamed[choice.index]
                    if self.prompt_only:  # the echo alone: the computed token is left out
                        if state.sent_echo and delta.finish_reason is None:
                            continue
                        delta = TokenDelta([], [], "length" if delta.finish_reason else None, "", [])
                    text = state.text_for(delta)
                    # A token whose text is empty (held back as a possible stop string, a partial
                    # character, a special token) still gets its chunk: clients and load generators
                    # time tokens by chunks, as with vLLM.
                    if not text and not delta.token_ids and delta.finish_reason is None and not extras:
                        continue
                    echo = None if state.sent_echo else self._echo_of(choice)
                    if echo:
                        state.token_text_offset = len(echo[0])
                    state.sent_echo = True
                    logprobs = self._logprobs(
                        delta.token_ids, delta.logprobs, state.token_text_offset, delta.top_logprobs
                    )
                    if logprobs is not None and logprobs.tokens:
                        state.token_text_offset = next_text_offset(self.ctx.tokenizer, delta.token_ids, logprobs)
                    if echo:  # the prompt goes out ahead of the choice's first tokens, in their chunk
                        text = echo[0] + text
                        logprobs = joined(echo[1], logprobs) if echo[1] else logprobs
                    finishing: dict[str, Any] = {}
                    if delta.finish_reason is not None:
                        finishing["stop_reason"] = choice.stop_reason
                    out = CompletionChoice(
                        index=choice.index,
                        text=text,
                        logprobs=logprobs,
                        finish_reason=delta.finish_reason,
                        **finishing,
                        **token_id_fields(
                            self.request.return_token_ids,
                            choice,
                            delta.token_ids,
                            with_prompt=not state.sent_prompt_ids,
                        ),
                    )
                    state.sent_prompt_ids = True
                    yield sse_json(self._chunk([out], group))
                if self.include_usage:
                    yield sse_json(self._response([], usage=self._usage(group)).model_dump_json(exclude_unset=True))
            except Exception as exc:
                yield error_event(exc)
            yield DONE
        finally:
            await group.aclose()

    def _chunk(self, choices: list[CompletionChoice], group: ChoiceGroup) -> str:
        extra: dict[str, Any] = {}
        if self.include_usage:
            extra["usage"] = self._usage_so_far(group) if self.continuous_usage else None
        return self._response(choices, **extra).model_dump_json(exclude_unset=True)

    def _response(self, choices: list[CompletionChoice], **extra: Any) -> CompletionResponse:
        return CompletionResponse(
            id=self.id,
            object="text_completion",
            created=self.created,
            model=self.ctx.model_name,
            choices=choices,
            **extra,
        )

    def _usage(self, group: ChoiceGroup) -> Usage:
        counted = usage(group)
        if self.prompt_only:  # the one token computed was not returned: nothing was completed
            counted.total_tokens -= counted.completion_tokens
            counted.completion_tokens = 0
        return counted

    def _usage_so_far(self, group: ChoiceGroup) -> Usage:
        """Usage with the tokens of the deltas taken so far (vLLM's continuous usage stats)."""
        counted = self._usage(group)
        if not self.prompt_only:
            counted.completion_tokens = self.generated
            counted.total_tokens = counted.prompt_tokens + self.generated
        return counted

    def _echo_of(self, choice: ChoiceStream) -> tuple[str, CompletionLogprobs | None] | None:
        return self.echo.of(choice) if self.echo is not None else None

    def _logprobs(
        self, token_ids: list[int], logprobs: list[float] | None, offset: int, top: list[TopLogprobs] | None
    ) -> CompletionLogprobs | None:
        if not self.want_logprobs or logprobs is None or len(logprobs) != len(token_ids):
            return None
        if not self.want_top or top is None or len(top) != len(token_ids):
            top = None
        return completion_logprobs(self.ctx.tokenizer, token_ids, logprobs, offset, top, self.texts)
