from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster_harness import NatsServer


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer()
    server.start()
    yield server
    server.stop()
