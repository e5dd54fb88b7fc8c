"""Unit checks of request plumbing: seeds per choice, and validation messages."""

from __future__ import annotations

from pdserve.sampling_params import choice_seed
from pdserve.services.router.api_requests import INT64_MAX, INT64_MIN, CompletionRequest
from pdserve.services.router.error_handlers import describe_validation_errors


def test_choice_seeds() -> None:
    assert choice_seed(None, 3) is None
    assert [choice_seed(10, i) for i in range(3)] == [10, 11, 12]
    assert choice_seed(INT64_MAX, 1) == INT64_MIN  # wraps within int64 (msgpack-safe)
    assert choice_seed(-5, 2) == -3


def validation_message(body: dict) -> tuple[str, str | None]:
    try:
        CompletionRequest.model_validate(body)
    except Exception as exc:
        error = describe_validation_errors(exc.errors())  # type: ignore[attr-defined]
        return error.message, error.param
    raise AssertionError("expected a validation error")


def test_validation_messages_name_the_field() -> None:
    assert validation_message({"prompt": 5}) == (
        "prompt: expected one of: str, list[int], list[str], list[list[int]]",
        "prompt",
    )
    assert validation_message({"prompt": ["a", 3]})[0] == "prompt.1: Input should be a valid string"
    assert validation_message({"prompt": "x", "max_tokens": -1}) == (
        "max_tokens: Input should be greater than or equal to 0",
        "max_tokens",
    )
    assert validation_message({"prompt": "x", "foo": 1}) == ("foo: unknown or unsupported field", "foo")
    assert validation_message({}) == ("prompt: field required", "prompt")
