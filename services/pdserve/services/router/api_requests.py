"""Request bodies of the OpenAI-compatible endpoints, as pydantic models.

The models are strict (no "5" for 5, no true for 1) and forbid unknown fields, so a typo or an
unsupported OpenAI feature is a 400 naming the field instead of being silently ignored. Fields
that clients commonly send at their neutral value (penalties 0, `logit_bias` {})
are declared and checked in `sampling.py`, with a clearer message than pydantic's.

Their constraints end up in /openapi.json, and the router accepts what that schema allows: the
schema fuzzer sends valid requests built from it and expects them served. Hence whole-number
floats (2.0) are integers, as in JSON Schema, and the neutral-value-only fields say so there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pdserve.engine.regex_nfa import MAX_PATTERN_CHARS
from pdserve.sampling_params import (
    INT64_MIN,
    MAX_ALLOWED_TOKEN_IDS,
    MAX_BAD_WORDS,
    MAX_CHOICES,
    MAX_GUIDED_CHOICES,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_PRESENCE_FREQUENCY_PENALTY,
    MAX_REPETITION_PENALTY,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_TOP_K,
    MAX_TOP_LOGPROBS,
    PRIORITY_BOUND,
)
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

INT64_MAX = (1 << 63) - 1
MAX_TOOLS = 128  # OpenAI's limit on tools per request
# OpenAI's default for completions; chat completions default to the end of the context.
DEFAULT_MAX_TOKENS = 16


def _whole_number(value: object) -> object:
    # JSON does not tell 2 from 2.0, and JSON Schema's "integer" accepts both.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Bounds go inside, before WHOLE: pydantic then keeps them in the integer's own JSON schema.
WHOLE = BeforeValidator(_whole_number)
PositiveInt = Annotated[int, Field(ge=1), WHOLE]
# Token ids travel as msgpack integers; no vocabulary comes near 2**31.
TokenId = Annotated[int, Field(ge=0, lt=1 << 31), WHOLE]
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX), WHOLE]


def _utf8_encodable(value: object) -> object:
    # JSON can carry lone surrogates ("\ud800"); no tokenizer, log or wire encoding can.
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("contains an unpaired UTF-16 surrogate") from None
    return value


Text = Annotated[str, AfterValidator(_utf8_encodable)]
# With length constraints the check comes first: they cannot measure a string with a lone surrogate.
NonEmptyText = Annotated[str, StringConstraints(min_length=1), BeforeValidator(_utf8_encodable)]
StopString = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_STOP_STRING_CHARS), BeforeValidator(_utf8_encodable)
]


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class StreamOptions(StrictModel):
    include_usage: bool | None = Field(False, description="send a last chunk with `choices: []` and `usage`")
    continuous_usage_stats: bool | None = Field(
        False, description="vLLM extension: with include_usage, every chunk also carries the usage so far"
    )


GuidedChoice = Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_GUIDED_CHOICES)]


class StructuredOutputs(StrictModel):
    """vLLM's structured_outputs; set exactly one field (grammars are not supported)."""

    json_: dict[str, Any] | None = Field(None, alias="json", description="a JSON schema the output satisfies")
    json_object: bool | None = Field(None, description="true: the output is one JSON object")
    choice: GuidedChoice | None = Field(None, description="the output is exactly one of these texts")
    regex: Annotated[str, StringConstraints(max_length=MAX_PATTERN_CHARS)] | None = Field(
        None, description="the output is a whole match of this regular expression"
    )


# Extra variables a request may hand the chat template (Qwen3's enable_thinking, ...).
MAX_TEMPLATE_KWARGS = 64


class ChatTemplateFields(StrictModel):
    """vLLM's controls of how a conversation is rendered (chat completions and /tokenize)."""

    add_generation_prompt: bool = Field(True, description="vLLM extension: open the assistant's turn")
    continue_final_message: bool = Field(
        False,
        description="vLLM extension: leave the last (assistant) message open, so the reply continues it; "
        "needs add_generation_prompt false",
    )
    chat_template_kwargs: Annotated[dict[str, Any], Field(max_length=MAX_TEMPLATE_KWARGS)] | None = Field(
        None, description="vLLM extension: extra variables for the chat template, e.g. {'enable_thinking': false}"
    )


class SamplingFields(StrictModel):
    """Fields shared by completions and chat completions."""

    model: Text | None = Field(None, description="must be the served model's id if given")
    temperature: float | None = Field(1.0, ge=0.0, le=100.0, description="0 is greedy")
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    top_k: Annotated[int, Field(ge=-1, le=MAX_TOP_K), WHOLE] | None = Field(
        None, description="vLLM extension; -1 or 0 disables"
    )
    min_p: float | None = Field(
        None, ge=0.0, le=1.0, description="vLLM extension: drops tokens under min_p x the likeliest one; 0 is off"
    )
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES), WHOLE] = Field(
        1, description="choices per prompt (at most the router's max_n)"
    )
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = Field(
        None, description=f"up to {MAX_STOP_STRINGS} strings; the text is cut before the first match"
    )
    stop_token_ids: list[TokenId] | None = Field(None, description="vLLM extension")
    seed: Seed | None = Field(None, description="choice i of a prompt samples with seed + i")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="vLLM extension")
    truncate_prompt_tokens: Annotated[int, Field(ge=1), WHOLE] | None = Field(
        None, description="vLLM extension: keep only the prompt's last this many tokens"
    )
    allowed_token_ids: Annotated[list[TokenId], Field(min_length=1, max_length=MAX_ALLOWED_TOKEN_IDS)] | None = Field(
        None, description="vLLM extension: only these token ids may be generated"
    )
    min_tokens: Annotated[int, Field(ge=0), WHOLE] | None = Field(
        None, description="vLLM extension: no eos, stop token or stop string ends a choice before this many tokens"
    )
    include_stop_str_in_output: bool = Field(False, description="vLLM extension")
    prompt_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), WHOLE] | None = Field(
        None,
        description="vLLM extension: score the prompt, with this many alternatives per token (not with stream)",
    )
    bad_words: Annotated[list[StopString], Field(max_length=MAX_BAD_WORDS)] | None = Field(
        None, description="vLLM extension: words the output must never contain (as the model's tokens)"
    )
    priority: Annotated[int, Field(ge=-PRIORITY_BOUND, lt=PRIORITY_BOUND), WHOLE] = Field(
        0,
        description="vLLM extension: lower is served first on workers started with --scheduling-policy priority; "
        "other workers refuse anything but 0",
    )
    skip_special_tokens: bool = Field(True, description="vLLM extension: false keeps special tokens in the text")
    return_token_ids: bool | None = Field(
        False, description="vLLM extension: generated ids as `token_ids`, prompt ids as `prompt_token_ids`"
    )
    presence_penalty: float | None = Field(
        0.0,
        ge=-MAX_PRESENCE_FREQUENCY_PENALTY,
        le=MAX_PRESENCE_FREQUENCY_PENALTY,
        description="subtracted from the logit of every token generated so far",
    )
    frequency_penalty: float | None = Field(
        0.0,
        ge=-MAX_PRESENCE_FREQUENCY_PENALTY,
        le=MAX_PRESENCE_FREQUENCY_PENALTY,
        description="subtracted from a token's logit once per time it was generated so far",
    )
    repetition_penalty: float | None = Field(
        1.0,
        gt=0.0,
        le=MAX_REPETITION_PENALTY,
        description="vLLM extension: logits of prompt and generated tokens divided by it (multiplied if negative)",
    )
    logit_bias: Annotated[dict[str, float], Field(max_length=MAX_LOGIT_BIAS_ENTRIES)] | None = Field(
        None, description="token id (as a string) -> bias in [-100, 100], added to that token's logit"
    )
    user: Text | None = Field(None, description="accepted and ignored")
    structured_outputs: StructuredOutputs | None = Field(
        None, description="vLLM extension: constrain the output to a JSON schema, any JSON object or one of some texts"
    )
    guided_json: dict[str, Any] | None = Field(None, description="vLLM's older spelling of structured_outputs.json")
    guided_choice: GuidedChoice | None = Field(None, description="vLLM's older spelling of structured_outputs.choice")
    guided_regex: Annotated[str, StringConstraints(max_length=MAX_PATTERN_CHARS)] | None = Field(
        None, description="vLLM's older spelling of structured_outputs.regex"
    )


class JsonSchemaFormat(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=256)] = Field(description="the schema's name (not used)")
    description: Text | None = Field(None, description="accepted and ignored")
    schema_: dict[str, Any] | None = Field(
        None,
        alias="schema",
        description="the JSON Schema the reply must satisfy (docs/engine.md lists the keywords enforced)",
    )
    strict: bool | None = Field(None, description="accepted; the schema is enforced either way")


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"] = Field(
        description="json_object: the reply is one JSON object; json_schema: a value that satisfies json_schema.schema"
    )
    json_schema: JsonSchemaFormat | None = Field(None, description="with type json_schema: the schema")


class CompletionRequest(SamplingFields):
    prompt: (
        NonEmptyText
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_CHOICES)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_CHOICES)]
    ) = Field(description="a string, a list of token ids, or a list of either (one choice per prompt and n)")
    max_tokens: Annotated[int, Field(ge=0), WHOLE] | None = Field(
        DEFAULT_MAX_TOKENS, description="null means up to the end of the context; 0 only with echo (the prompt alone)"
    )
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), WHOLE] | None = Field(
        None, description="return each chosen token's logprob and this many most likely alternatives"
    )
    echo: bool | None = Field(False, description="return the prompt ahead of the completion (with logprobs: scored)")
    best_of: PositiveInt | None = Field(None, description="only null or equal to n is supported")
    suffix: str | None = Field(None, description="only null is supported", json_schema_extra={"enum": [None]})
    response_format: ResponseFormat | None = Field(
        None, description="vLLM extension: JSON mode or a JSON schema, as in chat completions"
    )


class TextPart(StrictModel):
    type: Literal["text"]
    text: Text


class PromptMessage(StrictModel):
    role: Literal["system", "developer", "user"]
    content: Text | list[TextPart]
    name: Text | None = Field(None, description="accepted and ignored")


# OpenAI's rule for function names.
ToolName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]


class CalledFunction(StrictModel):
    name: ToolName
    arguments: Text = Field(description="the arguments as JSON text")


class ToolCall(StrictModel):
    id: Text
    type: Literal["function"]
    function: CalledFunction


class AssistantMessage(StrictModel):
    role: Literal["assistant"]
    content: Text | list[TextPart] | None = None
    name: Text | None = Field(None, description="accepted and ignored")
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = Field(
        None, description="the calls this turn made (rendered by the chat template)"
    )
    reasoning_content: Text | None = Field(
        None, description="the turn's thinking (a reasoning parser's output); the chat template decides if it shows"
    )


class ToolMessage(StrictModel):
    role: Literal["tool"]
    content: Text | list[TextPart]
    tool_call_id: Text = Field(description="the call this message answers")


ChatMessage = Annotated[PromptMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class FunctionDef(StrictModel):
    name: ToolName
    description: Text | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="JSON Schema of the arguments; enforced when the call is forced (tool_choice)"
    )
    strict: bool | None = Field(None, description="accepted; a forced call's arguments satisfy the schema either way")


class ToolDef(StrictModel):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(StrictModel):
    name: ToolName


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: FunctionName


class ChatCompletionRequest(SamplingFields, ChatTemplateFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: PositiveInt | None = Field(None, description="deprecated alias of max_completion_tokens")
    max_completion_tokens: PositiveInt | None = Field(None, description="null means up to the end of the context")
    logprobs: bool | None = Field(False, description="return the chosen token's logprob")
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), WHOLE] | None = Field(
        None, description="with logprobs: this many most likely alternatives per token"
    )
    tools: Annotated[list[ToolDef], Field(max_length=MAX_TOOLS)] | None = Field(
        None, description="functions the model may call; rendered into the prompt by the chat template"
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None,
        description="'required' or a named function: the reply is tool calls whose arguments satisfy the "
        "function's parameters; 'none': plain text; 'auto' (the default with tools): needs the router's "
        "--tool-call-parser",
    )
    parallel_tool_calls: bool | None = Field(None, description="false: tool_choice 'required' makes one call")
    response_format: ResponseFormat | None = Field(
        None,
        description="{'type': 'text'}, {'type': 'json_object'} (JSON mode) or "
        "{'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}} (structured output)",
    )
