"""POST /tokenize and /detokenize (vLLM's extensions): the served model's tokenizer, over HTTP.

Clients count tokens against the context, or check what a chat template renders, with the
same tokenizer and template the router uses for generation; nothing reaches a worker. Both run
on the router's tokenizer thread like prompts do, so a long text does not stall the streams.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pdserve.services.router.api_requests import (
    MAX_TOOLS,
    ChatMessage,
    ChatTemplateFields,
    StrictModel,
    Text,
    TokenId,
    ToolDef,
)
from pdserve.services.router.context import RouterContext
from pdserve.services.router.errors import invalid_request
from pdserve.services.router.openapi_docs import TOKENIZER_STATUSES, error_responses
from pdserve.services.router.prompts import RenderOptions
from pdserve.services.router.tool_calls import template_tools
from pydantic import BaseModel, Field


class TokenizeRequest(ChatTemplateFields):
    model: Text | None = Field(None, description="must be the served model's id if given")
    prompt: Text | None = Field(None, description="text to tokenize; or `messages`")
    messages: list[ChatMessage] | None = Field(None, description="a conversation, rendered by the chat template")
    tools: Annotated[list[ToolDef], Field(max_length=MAX_TOOLS)] | None = Field(
        None, description="with `messages`: tool definitions, rendered as chat completions render them"
    )
    add_special_tokens: bool = Field(True, description="with `prompt`: add the tokenizer's special tokens (BOS)")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int = Field(description="the served context length; 0 while no worker is live")
    tokens: list[int]


class DetokenizeRequest(StrictModel):
    model: Text | None = Field(None, description="must be the served model's id if given")
    tokens: list[TokenId] = Field(description="token ids to turn back into text (special tokens kept)")


class DetokenizeResponse(BaseModel):
    prompt: str


def tokenize_router(ctx: RouterContext) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/tokenize",
        response_model=TokenizeResponse,
        responses=error_responses(TOKENIZER_STATUSES),
        summary="Token ids of a prompt or conversation (vLLM's extension)",
    )
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        ctx.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise invalid_request("send exactly one of `prompt` and `messages`", param="prompt")
        if body.messages is not None:
            if not body.messages:
                raise invalid_request("messages is empty", param="messages")
            tools = template_tools(body.tools) if body.tools else None
            tokens = await ctx.prompts.encode_chat(body.messages, tools, RenderOptions.of(body))
        elif body.add_special_tokens:
            tokens = await ctx.prompts.encode(body.prompt or "")
        else:
            tokens = await ctx.prompts.encode_plain(body.prompt or "")
        return TokenizeResponse(count=len(tokens), max_model_len=max(ctx.backend.max_model_len, 0), tokens=tokens)

    @router.post(
        "/detokenize",
        response_model=DetokenizeResponse,
        responses=error_responses(TOKENIZER_STATUSES),
        summary="The text of token ids (vLLM's extension)",
    )
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        ctx.check_model(body.model)
        vocab = len(ctx.tokenizer)
        bad = next((t for t in body.tokens if t >= vocab), None)
        if bad is not None:
            raise invalid_request(f"token id {bad} is outside the vocabulary [0, {vocab})", param="tokens")
        return DetokenizeResponse(prompt=await ctx.prompts.decode(list(body.tokens)))

    return router
