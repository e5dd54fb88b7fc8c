"""Bearer API keys for /v1/*: 401 in OpenAI's shape unless `Authorization: Bearer <key>` matches.

Checked before the body is read, so an unauthenticated client cannot make the router buffer or
parse anything. Every configured key is compared in constant time, without stopping at a match,
so timing reveals neither a key nor which one matched.
"""

from __future__ import annotations

import hmac

from fastapi.security import HTTPBearer
from pdserve.services.router.errors import ApiError
from starlette.types import ASGIApp, Receive, Scope, Send

PROTECTED_PREFIX = "/v1/"
# vLLM's tokenizer endpoints sit outside /v1 but use the model as the API does: guarded alike.
PROTECTED_PATHS = frozenset({"/tokenize", "/detokenize"})

# Declared on the /v1 routes only so that /openapi.json shows the scheme; the middleware enforces it.
bearer_scheme = HTTPBearer(auto_error=False, description="one of the router's API keys")


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_keys: list[str]) -> None:
        if not api_keys or not all(isinstance(k, str) and k for k in api_keys):
            raise ValueError("api_keys must be a non-empty list of non-empty strings")
        self.app = app
        self._keys = [k.encode() for k in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"].startswith(PROTECTED_PREFIX) or scope["path"] in PROTECTED_PATHS):
            error = self._check(scope)
            if error is not None:
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> ApiError | None:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None:
            return _unauthorized("missing API key: send `Authorization: Bearer <key>`", "missing_api_key")
        scheme, _, token = header.partition(b" ")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(token.strip(), key)
        if scheme.lower() != b"bearer" or not matched:
            return _unauthorized("incorrect API key", "invalid_api_key")
        return None


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})
