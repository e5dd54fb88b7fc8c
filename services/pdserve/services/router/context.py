"""What every route of one router app shares: the backend, the tokenizer, the limits, the counters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pdserve.services.router.errors import DEFAULT_RETRY_AFTER_S, ApiError
from pdserve.services.router.metrics import RouterMetrics
from pdserve.services.router.prompts import PromptTokenizer
from pdserve.services.router.sampling import Limits
from pdserve.serving.backend import Backend


@dataclass(slots=True)
class RouterContext:
    backend: Backend
    tokenizer: Any  # a Hugging Face tokenizer: decode() on the event loop, encoding via `prompts`
    prompts: PromptTokenizer
    model_name: str
    limits: Limits
    request_timeout_s: float  # seconds from arrival until a request fails with 504
    tool_call_parser: str | None = None  # tool_choice "auto": the model's tool-call format (tool_parsers.py)
    reasoning_parser: str | None = None  # splits the model's thinking off its answer (reasoning.py)
    # SamplingParams field -> the model's default, for fields a request leaves out; "max_tokens"
    # caps every request (models/generation_defaults.py)
    sampling_defaults: dict[str, Any] = field(default_factory=dict)
    metrics: RouterMetrics = field(default_factory=RouterMetrics)
    created: int = field(default_factory=lambda: int(time.time()))

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise ApiError(
                404,
                f"The model {model!r} does not exist; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def max_model_len(self) -> int:
        """The backend's context length in tokens; 503 while it knows none (no live workers)."""
        length = self.backend.max_model_len
        if length <= 0:
            raise ApiError(
                503,
                "no workers are available to serve the request; retry later",
                code="no_capacity",
                headers={"Retry-After": str(DEFAULT_RETRY_AFTER_S)},
            )
        return length

    def max_tokens_cap(self) -> int | None:
        cap = self.sampling_defaults.get("max_tokens")
        return None if cap is None else int(cap)

    def deadline(self) -> float:
        """Unix seconds by which a request arriving now must be done."""
        return time.time() + self.request_timeout_s
