"""Counters of the transfer plane, exposed to logs and metrics as plain dicts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class ReceiverStats:
    """Decode side. A transfer is one ticket: ok when its KV was accepted, failed when it ended
    any other way (expired, cancelled, a rejected message, the peer gone). `rejected` counts
    refused UCX messages by reason (wire.Code names: unknown_ticket, layer_size, ...)."""

    error_handling: bool
    transport: dict[str, object]
    bytes_received: int = 0
    transfers_ok: int = 0
    transfers_failed: int = 0
    expired: int = 0
    cancelled: int = 0
    connections_accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "error_handling": self.error_handling,
            "transport": self.transport,
            "bytes_received": self.bytes_received,
            "transfers_ok": self.transfers_ok,
            "transfers_failed": self.transfers_failed,
            "expired": self.expired,
            "cancelled": self.cancelled,
            "connections_accepted": self.connections_accepted,
            "rejected": dict(self.rejected),
        }


@dataclass(slots=True)
class SenderStats:
    """Prefill side. `failures` counts failed pushes by cause: a wire.Code name when the
    receiver refused, else "timeout", "peer" (UCX error) or "protocol" (a malformed reply)."""

    error_handling: bool
    transport: dict[str, object] = field(default_factory=dict)
    bytes_sent: int = 0
    pushes_ok: int = 0
    pushes_failed: int = 0
    endpoints_created: int = 0
    endpoints_dropped: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "error_handling": self.error_handling,
            "transport": self.transport,
            "bytes_sent": self.bytes_sent,
            "pushes_ok": self.pushes_ok,
            "pushes_failed": self.pushes_failed,
            "endpoints_created": self.endpoints_created,
            "endpoints_dropped": self.endpoints_dropped,
            "failures": dict(self.failures),
        }
