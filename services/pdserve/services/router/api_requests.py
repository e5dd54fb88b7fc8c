"""Request bodies of the OpenAI-compatible endpoints, as pydantic models.

The models are strict (no "5" for 5, no true for 1) and forbid unknown fields, so a typo or an
unsupported OpenAI feature is a 400 naming the field instead of being silently ignored. Fields
that clients commonly send at their neutral value (penalties 0, `logit_bias` {}, `echo` false)
are declared and checked in `sampling.py`. Their constraints end up in /openapi.json, which the
schema fuzzer reads.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pdserve.sampling_params import MAX_TOP_K
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
# Token ids travel as msgpack integers; no vocabulary comes near 2**31.
TokenId = Annotated[int, Field(ge=0, lt=1 << 31)]
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


def _utf8_encodable(value: str) -> str:
    # JSON can carry lone surrogates ("\ud800"); no tokenizer, log or wire encoding can.
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("contains an unpaired UTF-16 surrogate") from None
    return value


Text = Annotated[str, AfterValidator(_utf8_encodable)]


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class StreamOptions(StrictModel):
    include_usage: bool | None = Field(False, description="send a last chunk with `choices: []` and `usage`")


class SamplingFields(StrictModel):
    """Fields shared by completions and chat completions."""

    model: Text | None = Field(None, description="must be the served model's id if given")
    temperature: float | None = Field(1.0, ge=0.0, le=100.0, description="0 is greedy")
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=MAX_TOP_K, description="vLLM extension; -1 or 0 disables")
    n: int = Field(1, ge=1, description="choices per prompt (at most the router's max_n)")
    stop: Text | list[Text] | None = Field(None, description="up to 16 strings; the text is cut before the first match")
    stop_token_ids: list[TokenId] | None = Field(None, description="vLLM extension")
    seed: Seed | None = Field(None, description="choice i of a prompt samples with seed + i")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="vLLM extension")
    include_stop_str_in_output: bool = Field(False, description="vLLM extension")
    return_token_ids: bool | None = Field(
        False, description="vLLM extension: generated ids as `token_ids`, prompt ids as `prompt_token_ids`"
    )
    presence_penalty: float | None = Field(0.0, description="only 0 is supported")
    frequency_penalty: float | None = Field(0.0, description="only 0 is supported")
    logit_bias: dict[str, float] | None = Field(None, description="only null or {} is supported")
    user: str | None = Field(None, description="accepted and ignored")


class CompletionRequest(SamplingFields):
    prompt: Text | list[TokenId] | list[Text] | list[list[TokenId]] = Field(
        description="a string, a list of token ids, or a list of either (one choice per prompt and n)"
    )
    max_tokens: int | None = Field(16, ge=1, description="null means up to the end of the context")
    logprobs: int | None = Field(
        None, ge=0, le=1, description="0 or 1: the chosen token's logprob; top alternatives are not returned"
    )
    echo: bool | None = Field(False, description="only false is supported")
    best_of: int | None = Field(None, ge=1, description="only null or equal to n is supported")
    suffix: str | None = Field(None, description="only null is supported")


class TextPart(StrictModel):
    type: Literal["text"]
    text: Text


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = Field(None, description="may be null only for assistant messages")
    name: str | None = Field(None, description="accepted and ignored")


class ResponseFormat(StrictModel):
    type: Literal["text"]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="deprecated alias of max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1, description="null means up to the end of the context")
    logprobs: bool | None = Field(False, description="return the chosen token's logprob")
    top_logprobs: int | None = Field(None, ge=0, le=0, description="only 0: top alternatives are not returned")
    response_format: ResponseFormat | None = Field(None, description="only {'type': 'text'}")
