"""A request's priority travels with it to the workers: a colocated worker scheduling by priority
serves the more urgent of two waiting requests first, and one serving first come, first served
refuses a priority with a 400. Real nats-server, real engines."""

from __future__ import annotations

import asyncio
import time

from cluster_harness import NatsServer, start_cluster
from pdserve.engine.config import EngineConfig
from pdserve.engine.llm_engine import LLMEngine
from pdserve.protocol import TokenChunk
from pdserve.sampling_params import SamplingParams
from pdserve.services.colocated import ColocatedWorker
from pdserve.serving.backend import GenerateRequest


def request(rid: str, priority: int, max_tokens: int) -> GenerateRequest:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, priority=priority)
    return GenerateRequest(rid, [5, 6, 7], params, time.time() + 60)


async def test_priority_reaches_the_worker(nats_server: NatsServer) -> None:
    cluster = await start_cluster(nats_server.url, prefill=0, decode=0, colocated=1)
    try:
        backend = cluster.backend
        assert backend is not None
        # The harness's worker serves first come, first served: a priority is refused, clearly.
        chunks = [c async for c in backend.generate(request("refused", 3, 4))]
        assert chunks[-1].error_code == 400 and "--scheduling-policy priority" in chunks[-1].error
        # Swap in a worker that schedules by priority, one sequence at a time.
        fcfs = cluster.workers.pop()
        await fcfs.close()
        config = EngineConfig(max_num_seqs=1, scheduling_policy="priority")
        engine = LLMEngine.from_model(None, dtype="float32", config=config)
        worker = ColocatedWorker(engine, fcfs.bus, model_name="test", worker_id="worker-p", heartbeat_s=0.4)
        await worker.start()
        cluster.workers.append(worker)
        await cluster.wait_ready()
        done: dict[str, float] = {}

        async def serve(rid: str, priority: int, max_tokens: int) -> TokenChunk:
            last = None
            async for chunk in backend.generate(request(rid, priority, max_tokens)):
                last = chunk
            assert last is not None and last.finish_reason == "length", last
            done[rid] = time.monotonic()
            return last

        long = asyncio.create_task(serve("long", 0, 300))
        while engine.num_running < 1:
            await asyncio.sleep(0.01)
        later = asyncio.create_task(serve("later", 5, 4))
        while engine.num_waiting < 1:
            await asyncio.sleep(0.01)
        urgent = asyncio.create_task(serve("urgent", -5, 4))
        await asyncio.wait_for(asyncio.gather(long, later, urgent), 60)
        assert done["long"] < done["urgent"] < done["later"], done
        await cluster.wait_idle()
    finally:
        await cluster.stop()
