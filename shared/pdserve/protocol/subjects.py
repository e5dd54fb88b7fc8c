"""NATS subject names. Every subject starts with the cluster name, so two clusters can share a
broker without their messages ever crossing."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_token(value: str, what: str) -> str:
    """Subject tokens come from flags and peers: no dots, wildcards or whitespace."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 characters of letters, digits, '_' or '-'")
    return value


class Subjects:
    def __init__(self, cluster: str = "pdserve") -> None:
        self.cluster = check_token(cluster, "cluster name")

    @property
    def heartbeat(self) -> str:
        return f"{self.cluster}.heartbeat"

    @property
    def router_heartbeat(self) -> str:
        return f"{self.cluster}.router_heartbeat"

    @property
    def cancel(self) -> str:
        return f"{self.cluster}.cancel"

    def task(self, worker_id: str) -> str:
        """GenerateTask for a prefill or colocated worker (request/reply)."""
        return f"{self.cluster}.task.{worker_id}"

    def kv_offer(self, worker_id: str) -> str:
        """KvOffer for a decode worker (request/reply)."""
        return f"{self.cluster}.kv_offer.{worker_id}"

    def stream(self, router_id: str, request_id: str) -> str:
        return f"{self.cluster}.stream.{router_id}.{request_id}"

    def stream_wildcard(self, router_id: str) -> str:
        return f"{self.cluster}.stream.{router_id}.*"

    def router_of_stream(self, subject: str) -> str | None:
        """The router id in a stream subject of this cluster (see stream()); None for anything else."""
        parts = subject.split(".")
        if len(parts) != 4 or parts[0] != self.cluster or parts[1] != "stream":
            return None
        return parts[2]
