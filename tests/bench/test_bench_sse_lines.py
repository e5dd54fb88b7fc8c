"""The bench client splits SSE lines as the specification says, so text holding U+2028, U+2029 or
U+0085 (which JSON leaves unescaped and `str.splitlines` breaks at) does not fail a request."""

from __future__ import annotations

import asyncio
import json

from hypothesis import assume, given
from hypothesis import strategies as st
from pdserve.bench.client import Endpoint, new_http_client, send_request
from pdserve.bench.datasets import BenchRequest
from pdserve.bench.sse_lines import SseLineSplitter

TRICKY = "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg é 世界"

chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")
lines_st = st.lists(st.text(alphabet=chars), min_size=1, max_size=8)


@given(
    lines=lines_st,
    terminators=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=8, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_any_chunking_and_terminators_give_back_the_lines(
    lines: list[str], terminators: list[str], cuts: list[int]
) -> None:
    for i in range(len(lines) - 1):
        # CR then an empty line ended by LF reads as one CRLF, by the specification: not a case.
        assume(not (terminators[i] == "\r" and lines[i + 1] == "" and terminators[i + 1] != "\r"))
    stream = "".join(line + terminators[i] for i, line in enumerate(lines)).encode()
    splitter, got, start = SseLineSplitter(), [], 0
    for cut in [*sorted({min(c, len(stream)) for c in cuts}), len(stream)]:
        got += splitter.feed(stream[start:cut])
        start = cut
    got += splitter.flush()
    assert got == lines


def test_an_unterminated_last_line_comes_out_at_the_end() -> None:
    splitter = SseLineSplitter()
    assert splitter.feed(b"data: 1\r") == ["data: 1"]
    assert splitter.feed(b"\ndata: 2") == []  # the LF belonged to the CR before it
    assert splitter.flush() == ["data: 2"]


async def test_a_stream_with_unicode_line_separators_in_its_text_is_read_whole() -> None:
    """A real HTTP server streams a completion whose text holds every character
    `str.splitlines` breaks at; the client records both chunks and no error."""
    events = [
        {"choices": [{"index": 0, "text": TRICKY, "finish_reason": None}]},
        {"choices": [{"index": 0, "text": TRICKY, "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]
    body = b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n" for e in events)
    body += b"data: [DONE]\n\n"
    assert "\u2028".encode() in body and "\x85".encode() in body

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (body[:50], body[50:51], body[51:]):  # cut inside an event, too
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with new_http_client(10) as client:
            endpoint = Endpoint(f"http://127.0.0.1:{port}", model="m")
            timeline = await send_request(client, endpoint, BenchRequest(prompt=[1, 2, 3], prompt_len=3, output_len=2))
    finally:
        server.close()
        await server.wait_closed()
    assert timeline.error is None, timeline.error
    assert len(timeline.chunk_s) == 2 and timeline.output_tokens == 2
