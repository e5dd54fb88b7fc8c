"""PDSERVE_EVENT_LOOP picks the services' event loop: uvloop by default where installed."""

from __future__ import annotations

import asyncio

import pytest
from pdserve import event_loop


async def _kind() -> str:
    await asyncio.sleep(0)
    return event_loop.name()


def test_auto_runs_on_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv(event_loop.ENV_VAR, raising=False)
    assert event_loop.run(_kind()) == "uvloop"


def test_asyncio_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV_VAR, "asyncio")
    assert event_loop.run(_kind()) == "asyncio"


def test_a_bad_choice_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV_VAR, "tokio")
    with pytest.raises(ValueError, match="PDSERVE_EVENT_LOOP must be one of auto, uvloop, asyncio"):
        event_loop.run(_kind())
