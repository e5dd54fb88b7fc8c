"""What arrives on a request's stream subject: the worker's TaskAck, then its TokenChunks.

The router sends each GenerateTask with the request's stream subject as the reply inbox, so the
ack comes in through the same subscription as the tokens (no reply subscription, inbox token
or reply future per request; docs/benchmarks.md, router overhead). Workers just reply to the
task's reply subject, whatever it is.
"""

from __future__ import annotations

from pdserve.protocol.codec import from_body, unpack
from pdserve.protocol.messages import TaskAck, TokenChunk

StreamMessage = TaskAck | TokenChunk


def decode_stream_message(data: bytes) -> StreamMessage:
    """A TaskAck if the message says it is one, else a TokenChunk (checked as such)."""
    body = unpack(data)
    if isinstance(body, dict) and body.get("type") == "TaskAck":
        return from_body(body, TaskAck)
    return from_body(body, TokenChunk)
