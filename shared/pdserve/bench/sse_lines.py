"""Lines of a server-sent event stream, split as the SSE specification says: at CRLF, LF or CR.

httpx's `aiter_lines` splits like `str.splitlines`, which also breaks at U+0085, U+2028, U+2029
and a few ASCII separators. JSON leaves U+0085, U+2028 and U+2029 unescaped inside strings, so
a model that emits one (a byte-level model does, now and then) had its event cut in two and
the request counted as failed with a JSONDecodeError. Splitting the raw bytes is exact: no
byte of a multi-byte UTF-8 character is CR or LF.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx


class SseLineSplitter:
    """Bytes in, complete lines out (without their terminators), across any chunking."""

    def __init__(self) -> None:
        self._pending = b""
        self._after_cr = False  # the last chunk ended in CR: an LF starting the next one belongs to it

    def feed(self, data: bytes) -> list[str]:
        if self._after_cr and data.startswith(b"\n"):
            data = data[1:]
        self._after_cr = data.endswith(b"\r")
        buffer = self._pending + data
        # CRLF and lone CR become LF; a CR at the very end is complete (its LF, if any, is skipped above).
        parts = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._pending = parts.pop()
        return [part.decode("utf-8", errors="replace") for part in parts]

    def flush(self) -> list[str]:
        """What is left after the stream ends, if it did not end with a line terminator."""
        rest, self._pending = self._pending, b""
        return [rest.decode("utf-8", errors="replace")] if rest else []


async def sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    splitter = SseLineSplitter()
    async for data in response.aiter_bytes():
        for line in splitter.feed(data):
            yield line
    for line in splitter.flush():
        yield line
