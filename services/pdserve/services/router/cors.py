"""Cross-origin requests (CORS), so that browser apps on other origins can call the API.

Off unless --allowed-origins is given. vLLM allows every origin by default; pdserve does not,
since a page on any site could then drive the server from its visitors' browsers (on their
network, with what they can reach). The flags keep vLLM's names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.middleware.cors import CORSMiddleware

# Browsers let scripts read only the headers named here: the request id is what an app needs to
# report a failed request, and Retry-After what it needs to back off after a 429 or 503.
EXPOSED_HEADERS = ("x-request-id", "retry-after")


@dataclass(frozen=True)
class CorsPolicy:
    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = ("*",)
    allow_headers: tuple[str, ...] = ("*",)
    allow_credentials: bool = False

    def middleware(self) -> tuple[type, dict[str, Any]]:
        """Starlette's CORS middleware and its options, for the app's middleware list."""
        return CORSMiddleware, {
            "allow_origins": list(self.allow_origins),
            "allow_methods": list(self.allow_methods),
            "allow_headers": list(self.allow_headers),
            "allow_credentials": self.allow_credentials,
            "expose_headers": list(EXPOSED_HEADERS),
        }


def parse_list(text: str, flag: str) -> tuple[str, ...]:
    """A JSON list of strings (as vLLM takes it) or comma-separated values."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            values = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{flag}: not a JSON list ({exc.msg}); or give comma-separated values") from None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{flag}: expected a JSON list of strings, got {stripped!r}")
    else:
        values = stripped.split(",")
    items = tuple(v.strip() for v in values if v.strip())
    if not items:
        raise ValueError(f"{flag}: no values in {text!r}")
    return items


def cors_policy(
    allowed_origins: str | None,
    allowed_methods: str | None = None,
    allowed_headers: str | None = None,
    allow_credentials: bool = False,
) -> CorsPolicy | None:
    """The CORS policy the flags ask for; None (no CORS headers) without --allowed-origins."""
    if allowed_origins is None:
        if allowed_methods is not None or allowed_headers is not None or allow_credentials:
            raise ValueError("--allowed-methods, --allowed-headers and --allow-credentials need --allowed-origins")
        return None
    origins = parse_list(allowed_origins, "--allowed-origins")
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"--allowed-origins: {origin!r} is not an origin like https://app.example.com (or *)")
        if origin.endswith("/"):
            raise ValueError(f"--allowed-origins: {origin!r} ends with '/'; browsers send origins without one")
    return CorsPolicy(
        allow_origins=origins,
        allow_methods=parse_list(allowed_methods, "--allowed-methods") if allowed_methods is not None else ("*",),
        allow_headers=parse_list(allowed_headers, "--allowed-headers") if allowed_headers is not None else ("*",),
        allow_credentials=allow_credentials,
    )
