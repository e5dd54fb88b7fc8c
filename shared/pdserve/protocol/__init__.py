"""The wire protocol between router, prefill, decode and colocated workers."""

from pdserve.protocol.codec import PROTOCOL_VERSION, decode, encode
from pdserve.protocol.messages import (
    CancelRequest,
    GenerateTask,
    KvAdmission,
    KvOffer,
    RouterHeartbeat,
    TaskAck,
    TokenChunk,
    WorkerHeartbeat,
    params_from_wire,
    params_to_wire,
)
from pdserve.protocol.subjects import Subjects, check_token

__all__ = [
    "PROTOCOL_VERSION",
    "CancelRequest",
    "GenerateTask",
    "KvAdmission",
    "KvOffer",
    "RouterHeartbeat",
    "Subjects",
    "TaskAck",
    "TokenChunk",
    "WorkerHeartbeat",
    "check_token",
    "decode",
    "encode",
    "params_from_wire",
    "params_to_wire",
]
