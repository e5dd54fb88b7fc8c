"""Fixtures for the transfer plane: a started KvReceiver and a KvSender on the test's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pdserve.transfer import KvReceiver, KvSender


@pytest.fixture
async def receiver() -> AsyncIterator[KvReceiver]:
    r = KvReceiver(lease_timeout_s=5.0)
    await r.start()
    yield r
    await r.close()


@pytest.fixture
async def sender() -> AsyncIterator[KvSender]:
    s = KvSender()
    yield s
    await s.close()
