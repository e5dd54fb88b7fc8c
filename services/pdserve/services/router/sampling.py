"""From a validated request body to the engine's SamplingParams, one per choice.

Also the router's own limits: context length, prompt length, max_tokens and n. These are checked
before anything reaches a worker, so a request that cannot be served is a 400 that names the
numbers rather than a failure deep in the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pdserve.errors import InvalidRequestError
from pdserve.sampling_params import SamplingParams
from pdserve.services.router.api_requests import MAX_CHOICES, ResponseFormat, SamplingFields
from pdserve.services.router.errors import invalid_request

# The sampler works in float32: logits / 1e-45 overflow to inf and top_p = 5e-324 rounds to 0,
# and either makes the probabilities NaN, which fails the whole engine step. Both limits mean
# the same as the values below them: greedy (as in vLLM), and only the most likely token (whose
# probability is at least 1 / vocabulary size, far above MIN_TOP_P).
MIN_TEMPERATURE = 1e-5
MIN_TOP_P = 1e-8


@dataclass(slots=True, frozen=True)
class Limits:
    """Server-side limits (tokens) set when the app is created."""

    max_prompt_tokens: int | None = None
    max_tokens_limit: int | None = None
    max_n: int = 8


def check_unsupported(body: SamplingFields) -> None:
    """400 for field combinations the schema cannot express."""
    if body.stream_options is not None and not body.stream:
        raise invalid_request("stream_options: only allowed when stream is true", param="stream_options")


def check_choices(num_prompts: int, n: int, limits: Limits) -> None:
    if n > limits.max_n:
        raise invalid_request(f"n: at most {limits.max_n} choices per prompt, got {n}", param="n")
    if num_prompts * n > MAX_CHOICES:
        raise invalid_request(
            f"{num_prompts} prompts x n={n} is {num_prompts * n} choices; at most {MAX_CHOICES} per request",
            param="prompt",
        )


def check_max_tokens_limit(requested: int, limits: Limits, param: str) -> None:
    if limits.max_tokens_limit is not None and requested > limits.max_tokens_limit:
        raise invalid_request(
            f"{param}: at most {limits.max_tokens_limit} on this server, got {requested}", param=param
        )


def resolve_max_tokens(
    requested: int | None,
    prompt_len: int,
    max_model_len: int,
    limits: Limits,
    *,
    param: str = "max_tokens",
    prompt_param: str = "prompt",
    default: int | None = None,
    cap: int | None = None,
) -> int:
    """Tokens to generate for a prompt of `prompt_len` tokens.

    `requested` None means the client did not say: `default` tokens, or with no default up to
    the end of the context, either capped by the room left and the server's max_tokens_limit.
    A prompt must leave room for one generated token, and prompt + requested must fit the
    context: like vLLM, an oversized request is refused rather than silently shortened.
    `cap` (the model's max_new_tokens, generation_config.json) then bounds either, as vLLM
    bounds every request by it; a request cut there ends with finish_reason "length".
    """
    tokens = _max_tokens(requested, prompt_len, max_model_len, limits, param, prompt_param, default)
    return tokens if cap is None else min(tokens, cap)


def _max_tokens(
    requested: int | None,
    prompt_len: int,
    max_model_len: int,
    limits: Limits,
    param: str,
    prompt_param: str,
    default: int | None,
) -> int:
    if limits.max_prompt_tokens is not None and prompt_len > limits.max_prompt_tokens:
        raise invalid_request(
            f"the prompt has {prompt_len} tokens; this server accepts at most {limits.max_prompt_tokens}",
            param=prompt_param,
        )
    if prompt_len >= max_model_len:
        raise invalid_request(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has {prompt_len} "
            f"tokens (at most {max_model_len - 1}, leaving room for one generated token). Shorten the prompt.",
            param=prompt_param,
        )
    room = max_model_len - prompt_len
    if requested is None:
        caps = [c for c in (default, limits.max_tokens_limit) if c is not None]
        return min([room, *caps])
    check_max_tokens_limit(requested, limits, param)
    if requested > room:
        raise invalid_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the completion). "
            f"Reduce the prompt or {param}.",
            param=param,
        )
    return requested


# SamplingParams' errors that start with the request field at fault: answered with that `param`.
_FIELDS_NAMED_BY_ERRORS = (
    "logit_bias",
    "repetition_penalty",
    "min_tokens",
    "allowed_token_ids",
    "bad_words",
    "priority",
)


def sampling_params(
    body: SamplingFields,
    max_tokens: int,
    seed: int | None,
    logprobs: bool,
    top_logprobs: int = 0,
    *,
    response_format: ResponseFormat | None = None,
    tool_schema: dict[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    reasoning_parser: str | None = None,
) -> SamplingParams:
    """`defaults`: the model's sampling defaults (models/generation_defaults.py) for the fields
    the request leaves out or sends as null. `reasoning_parser` (chat, the router's): a grammar
    from response_format or guided decoding holds after the model's thinking; a forced tool
    call's holds from the first token."""
    stop = body.stop if body.stop is not None else []
    source, grammar = _grammar(body, response_format, tool_schema)
    temperature, top_k, top_p, min_p, repetition_penalty = (
        _given(body, defaults, name) for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
    )
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_temperature(temperature),
            top_k=0 if top_k is None else top_k,
            top_p=1.0 if top_p is None else max(top_p, MIN_TOP_P),
            min_p=min_p or 0.0,
            seed=seed,
            stop=[stop] if isinstance(stop, str) else list(stop),
            stop_token_ids=list(body.stop_token_ids or []),
            ignore_eos=body.ignore_eos,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
            logit_bias=dict(body.logit_bias or {}),  # type: ignore[arg-type]  # ids as strings, read as ids
            allowed_token_ids=None if body.allowed_token_ids is None else list(body.allowed_token_ids),
            truncate_prompt_tokens=body.truncate_prompt_tokens,
            min_tokens=body.min_tokens or 0,
            **grammar,
            reasoning_parser=reasoning_parser if grammar and tool_schema is None else None,
            include_stop_str_in_output=body.include_stop_str_in_output,
            skip_special_tokens=body.skip_special_tokens,
            priority=body.priority,
            bad_words=None if body.bad_words is None else list(body.bad_words),
            prompt_logprobs=body.prompt_logprobs,
        )
    except InvalidRequestError as exc:
        param = next(
            (name for name in _FIELDS_NAMED_BY_ERRORS if str(exc).startswith(name)),
            None,
        )
        if str(exc).startswith(("json_schema", "guided_choice", "regex")):
            param = source
        raise invalid_request(str(exc), param=param) from None


def _grammar(
    body: SamplingFields, response_format: ResponseFormat | None, tool_schema: dict[str, Any] | None
) -> tuple[str | None, dict[str, Any]]:
    """The output constraint, from whichever of response_format, structured_outputs (vLLM's),
    guided_json / guided_choice (vLLM's older spelling) and a forced tool call the request used:
    at most one of them. Returns the field it came from and SamplingParams' fields for it."""
    sources: list[tuple[str, dict[str, Any]]] = []
    if tool_schema is not None:
        sources.append(("tool_choice", {"json_schema": tool_schema}))
    if response_format is not None:
        if response_format.type != "json_schema" and response_format.json_schema is not None:
            raise invalid_request("response_format.json_schema: only with type json_schema", param="response_format")
        if response_format.type == "json_object":
            sources.append(("response_format", {"json_object": True}))
        elif response_format.type == "json_schema":
            fmt = response_format.json_schema
            if fmt is None or fmt.schema_ is None:
                raise invalid_request(
                    "response_format: type json_schema needs json_schema: {'name': ..., 'schema': {...}}",
                    param="response_format",
                )
            sources.append(("response_format", {"json_schema": fmt.schema_}))
    wanted = body.structured_outputs
    if wanted is not None:
        fields: dict[str, Any] = {"json_schema": wanted.json_, "json_object": wanted.json_object or None}
        fields["guided_choice"] = wanted.choice
        fields["guided_regex"] = wanted.regex
        chosen = {k: v for k, v in fields.items() if v is not None}
        if len(chosen) != 1:
            raise invalid_request(
                "structured_outputs: set exactly one of json, json_object (true), choice and regex",
                param="structured_outputs",
            )
        sources.append(("structured_outputs", chosen))
    if body.guided_json is not None:
        sources.append(("guided_json", {"json_schema": body.guided_json}))
    if body.guided_choice is not None:
        sources.append(("guided_choice", {"guided_choice": list(body.guided_choice)}))
    if body.guided_regex is not None:
        sources.append(("guided_regex", {"guided_regex": body.guided_regex}))
    if len(sources) > 1:
        raise invalid_request(f"{sources[0][0]} and {sources[1][0]} exclude each other: use one", param=sources[1][0])
    return sources[0] if sources else (None, {})


def _given(body: SamplingFields, defaults: Mapping[str, Any] | None, name: str) -> Any:
    """The request's value of `name`, or the model's default where it left the field out or sent null."""
    value = getattr(body, name) if name in body.model_fields_set else None
    return defaults.get(name) if value is None and defaults else value


def _temperature(requested: float | None) -> float:
    if requested is None:
        return 1.0
    return 0.0 if requested < MIN_TEMPERATURE else requested
