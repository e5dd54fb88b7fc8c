"""Response bodies and stream chunks, in OpenAI's shapes.

Built with pydantic so /openapi.json documents them, and dumped with `exclude_unset=True`. The
rule that makes this safe: a field OpenAI always sends (even as null) has no default, so it must
be given; a field with a default (`token_ids`, `prompt_token_ids`, `usage` in stream chunks, the
keys of a chat delta) appears only when the code sets it, i.e. when the client asked for it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens served from the prefix cache")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="each prompt counted once, whatever n is")
    completion_tokens: int = Field(description="generated tokens over all choices, eos included")
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="null only for an echoed prompt's first token")
    top_logprobs: list[dict[str, float] | None] | None = Field(
        description="per token, the `logprobs` most likely tokens' texts and logprobs (null for an echoed "
        "prompt's first token); null when `logprobs` is 0"
    )
    text_offset: list[int] = Field(description="character offset of each token in the completion text")


class PromptLogprob(BaseModel):
    logprob: float
    rank: int | None = Field(description="tokens at least as likely at this position, this one included (1: best)")
    decoded_token: str


STOP_REASON_DESCRIPTION = (
    "vLLM extension: the stop string or stop token id that ended the choice; null for eos, length "
    "or a grammar (in a stream, on the finishing chunk)"
)
PROMPT_LOGPROBS_DESCRIPTION = (
    "vLLM extension, with `prompt_logprobs`: per prompt token, null for the first, then token id -> "
    "{logprob, rank, decoded_token} for the prompt token and the `prompt_logprobs` most likely ones"
)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None
    stop_reason: str | int | None = Field(default=None, description=STOP_REASON_DESCRIPTION)
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(
        default=None, description=PROMPT_LOGPROBS_DESCRIPTION
    )


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] = Field(description="UTF-8 bytes of `token`")


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] = Field(description="UTF-8 bytes of `token`")
    top_logprobs: list[ChatTopLogprob] = Field(description="the `top_logprobs` most likely tokens, best first")


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]
    refusal: None


class CalledFunctionOut(BaseModel):
    name: str
    arguments: str = Field(description="the arguments as JSON text")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: CalledFunctionOut


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    reasoning_content: str | None = Field(
        default=None, description="with the router's --reasoning-parser: the model's thinking, apart from content"
    )
    content: str | None = Field(description="null when the reply is tool calls")
    tool_calls: list[ToolCallOut] | None = Field(default=None, description="present when tool_choice forced calls")


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length", "tool_calls"] | None
    stop_reason: str | int | None = Field(default=None, description=STOP_REASON_DESCRIPTION)
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(
        default=None, description=PROMPT_LOGPROBS_DESCRIPTION
    )


class CalledFunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: CalledFunctionDelta


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    reasoning_content: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length", "tool_calls"] | None
    stop_reason: str | int | None = Field(default=None, description=STOP_REASON_DESCRIPTION)
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: Usage | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class VersionResponse(BaseModel):
    version: str


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]


class ClusterResponse(BaseModel):
    workers: list[dict[str, object]]


# Completions stream chunks have the same shape as the response, with partial `text`.
CompletionChunk = CompletionResponse
