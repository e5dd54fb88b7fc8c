"""EngineLoop: the engine on its own thread, commands before steps, outputs handled in order."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from pdserve import LLM, SamplingParams
from pdserve.engine.llm_engine import LLMEngine
from pdserve.outputs import RequestOutput
from pdserve.serving.engine_loop import EngineLoop


class Collector:
    def __init__(self) -> None:
        self.outputs: list[RequestOutput] = []
        self.finished: dict[str, asyncio.Event] = {}

    async def __call__(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            self.outputs.append(out)
            if out.finished:
                self.finished.setdefault(out.request_id, asyncio.Event()).set()

    async def wait(self, request_id: str) -> list[int]:
        await asyncio.wait_for(self.finished.setdefault(request_id, asyncio.Event()).wait(), 30)
        return [t for o in self.outputs if o.request_id == request_id for t in o.new_token_ids]


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return LLMEngine.from_model(None, dtype="float32")


async def test_commands_run_on_the_engine_thread_and_errors_come_back(engine: LLMEngine) -> None:
    loop = EngineLoop(engine, Collector())
    await loop.start()
    try:
        assert await loop.call(lambda: threading.current_thread().name) == "pdserve-engine"

        def broken() -> None:
            raise ValueError("bad command")

        with pytest.raises(ValueError, match="bad command"):
            await loop.call(broken)
        assert await loop.call(lambda: 41 + 1) == 42  # the thread survived the failed command
    finally:
        await loop.stop()


async def test_requests_stream_the_tokens_offline_generation_gives(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True)
    prompts = [[1, 2, 3], list(range(40)), [9]]
    expected = [o.token_ids for o in LLM(dtype="float32").generate(prompts, params)]
    collector = Collector()
    loop = EngineLoop(engine, collector)
    await loop.start()
    try:
        for i, prompt in enumerate(prompts):
            loop.submit(lambda i=i, prompt=prompt: engine.add_request(f"r{i}", prompt, params))
        got = [await collector.wait(f"r{i}") for i in range(len(prompts))]
        assert got == expected
        assert loop.steps >= 7
    finally:
        await loop.stop()


async def test_a_failed_step_ends_its_requests_and_serving_goes_on(
    engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = Collector()
    loop = EngineLoop(engine, collector)
    real_step = engine.step
    failures = [1]

    def step_failing_once() -> list[RequestOutput]:
        if failures:
            failures.pop()
            raise RuntimeError("kernel blew up")
        return real_step()

    monkeypatch.setattr(engine, "step", step_failing_once)
    await loop.start()
    try:
        params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
        await loop.call(lambda: engine.add_request("doomed", [1, 2, 3], params))
        await collector.wait("doomed")
        assert collector.outputs[-1].finish_reason == "abort"
        await loop.call(lambda: engine.add_request("fine", [1, 2, 3], params))
        assert len(await collector.wait("fine")) == 3
    finally:
        await loop.stop()


async def test_tasks_the_handler_starts_get_their_commands_in_before_the_next_step(engine: LLMEngine) -> None:
    """A prefill worker's hand-off asks for the KV export from a task its output handler starts;
    that export must run before the engine's next step, not one step later."""
    seen: list[tuple[int, int]] = []  # (steps when the output came, steps when the command ran)
    tasks: set[asyncio.Task[Any]] = set()

    async def follow_up(at_step: int) -> None:
        ran_at = await loop.call(lambda: loop.steps)
        seen.append((at_step, ran_at))

    async def handler(outputs: list[RequestOutput]) -> None:
        task = asyncio.create_task(follow_up(loop.steps))
        tasks.add(task)

    loop = EngineLoop(engine, handler)
    await loop.start()
    try:
        params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
        await loop.call(lambda: engine.add_request("r", list(range(20)), params))
        while len(seen) < 6:
            await asyncio.sleep(0.01)
        assert all(ran_at == at_step for at_step, ran_at in seen), seen
    finally:
        await loop.stop()


async def test_stop_ends_the_thread_and_refuses_new_commands(engine: LLMEngine) -> None:
    loop = EngineLoop(engine, Collector())
    await loop.start()
    await loop.call(lambda: None)
    await loop.stop()
    assert loop._thread is not None and not loop._thread.is_alive()
    with pytest.raises(RuntimeError, match="stopped"):
        loop.submit(lambda: None)


async def test_submit_before_start_is_a_clear_error(engine: LLMEngine) -> None:
    with pytest.raises(RuntimeError, match="start"):
        EngineLoop(engine, Collector()).submit(lambda: None)
