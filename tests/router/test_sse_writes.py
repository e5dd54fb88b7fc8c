"""How SseResponse groups events into writes: a stream whose events are all ready goes out in one
write with the end of the response; otherwise the first event goes at once and later ones follow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from pdserve.services.router.sse import SseResponse


class Client:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def bodies(self) -> list[tuple[bytes, bool]]:
        return [(m["body"], m["more_body"]) for m in self.sent if m["type"] == "http.response.body"]


async def _events(gaps: list[float]) -> AsyncGenerator[bytes, None]:
    for i, gap in enumerate(gaps):
        if gap:
            await asyncio.sleep(gap)
        yield f"data: {i}\n\n".encode()


async def test_ready_events_go_out_in_one_write_with_the_end() -> None:
    client = Client()
    await SseResponse(_events([0, 0, 0]), ready=lambda: True)({"type": "http"}, client.receive, client.send)
    assert client.bodies() == [(b"data: 0\n\ndata: 1\n\ndata: 2\n\n", False)]


async def test_first_event_is_not_held_back_for_later_ones() -> None:
    client = Client()
    response = SseResponse(_events([0, 0.05, 0.05]), ready=lambda: False)
    task = asyncio.create_task(response({"type": "http"}, client.receive, client.send))
    await asyncio.sleep(0.02)
    assert client.bodies() == [(b"data: 0\n\n", True)]  # written before event 1 exists
    await task
    bodies = client.bodies()
    assert b"".join(body for body, _ in bodies) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert bodies[-1][1] is False and all(more for _, more in bodies[:-1])


async def test_without_a_hint_every_event_still_arrives_in_order() -> None:
    client = Client()
    await SseResponse(_events([0, 0, 0.01, 0]))({"type": "http"}, client.receive, client.send)
    assert b"".join(body for body, _ in client.bodies()) == b"".join(f"data: {i}\n\n".encode() for i in range(4))
    assert client.bodies()[-1][1] is False


async def test_headers_go_out_right_before_the_first_events() -> None:
    """uvicorn writes the headers as soon as it gets them: sent before the first event was made,
    they cost the client a wake of its own on the path of every short answer."""
    log: list[str] = []
    client = Client()

    async def events() -> AsyncGenerator[bytes, None]:
        for i in range(2):
            log.append(f"made {i}")
            yield f"data: {i}\n\n".encode()

    async def send(message: dict[str, Any]) -> None:
        log.append(message["type"])
        await client.send(message)

    await SseResponse(events(), ready=lambda: True)({"type": "http"}, client.receive, send)
    assert log == ["made 0", "made 1", "http.response.start", "http.response.body"]
    assert client.sent[0]["status"] == 200


async def test_a_source_failing_before_any_event_starts_no_response() -> None:
    """Nothing was sent, so whoever runs the app can still answer with a proper error status."""
    client = Client()

    async def events() -> AsyncGenerator[bytes, None]:
        raise RuntimeError("broken source")
        yield b""  # pragma: no cover

    try:
        await SseResponse(events(), ready=lambda: True)({"type": "http"}, client.receive, client.send)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the source's error must propagate")
    assert client.sent == []


async def test_the_response_ends_at_done_before_the_source_cleans_up() -> None:
    """[DONE] is the last event by protocol, so the answer goes out before the source's cleanup
    (closing its requests) runs; the cleanup still runs."""
    from pdserve.services.router.sse import DONE

    log: list[str] = []
    client = Client()

    async def events() -> AsyncGenerator[bytes, None]:
        try:
            yield b"data: 0\n\n"
            yield DONE
        finally:
            log.append("cleanup")

    async def send(message: dict[str, Any]) -> None:
        log.append(message["type"])
        await client.send(message)

    await SseResponse(events(), ready=lambda: True)({"type": "http"}, client.receive, send)
    assert log == ["http.response.start", "http.response.body", "cleanup"]
    assert client.bodies() == [(b"data: 0\n\n" + DONE, False)]
