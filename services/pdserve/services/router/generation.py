"""The part of a completion request that does not depend on its shape: run the choices, answer.

Ownership of the backend requests is explicit: this function closes the ChoiceGroup on every
path, except when it hands it to the SSE response, which then closes it when the stream ends.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import structlog
from fastapi import Request
from pdserve.services.router.api_responses import PromptTokensDetails, Usage
from pdserve.services.router.choice_group import ChoiceGroup
from pdserve.services.router.choice_stream import ChoiceStream
from pdserve.services.router.context import RouterContext
from pdserve.services.router.disconnect import ClientDisconnected, DisconnectWatch
from pdserve.services.router.sse import SseResponse
from pydantic import BaseModel
from starlette.responses import Response

log = structlog.get_logger("pdserve.router")

# nginx's convention for "the client closed the connection"; no client ever sees it.
CLIENT_CLOSED_REQUEST = 499


async def answer(
    ctx: RouterContext,
    request: Request,
    group: ChoiceGroup,
    *,
    stream: bool,
    events: Callable[[ChoiceGroup], AsyncGenerator[bytes, None]],
    body: Callable[[ChoiceGroup], BaseModel],
) -> Response:
    """Wait for every choice's first token, then stream `events(group)` or answer `body(group)`.

    Errors before the first token (ApiError) propagate, so they become HTTP statuses.
    """
    handed_off = False
    watch = DisconnectWatch(request.receive)
    try:
        await watch.guard(group.wait_first())
        if stream:
            handed_off = True
            return SseResponse(
                events(group), on_disconnect=lambda: _count_disconnect(ctx), watch=watch, ready=group.ready
            )
        await watch.guard(group.run_to_end())
        return Response(body(group).model_dump_json(exclude_unset=True), media_type="application/json")
    except ClientDisconnected:
        _count_disconnect(ctx)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        if not handed_off:
            watch.close()
            await group.aclose()


def usage(group: ChoiceGroup) -> Usage:
    """Each prompt counted once (with its first choice's cached tokens); every choice's output."""
    firsts: dict[int, ChoiceStream] = {}
    for choice in group.choices:
        firsts.setdefault(choice.prompt_index, choice)
    prompt_tokens = sum(len(c.prompt_token_ids) for c in firsts.values())
    completion_tokens = sum(len(c.token_ids) for c in group.choices)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(c.cached_tokens for c in firsts.values())),
    )


def _count_disconnect(ctx: RouterContext) -> None:
    ctx.metrics.client_disconnects += 1
    log.info("client disconnected; request cancelled")
