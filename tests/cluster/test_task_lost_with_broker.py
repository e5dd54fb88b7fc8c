"""A task whose ack is lost because the broker went down while the router waited for it: the
router waits for the cluster to come back and serves the request, as it does for one sent while
the broker is down, instead of answering 503 "did not answer" (found by the chaos run: a worker
had accepted the task and held its ack back for its first chunk when nats-server was killed).

Real nats-server, killed and restarted on the same port. The first worker is a bare NATS client
that beats as a colocated worker and takes tasks without ever answering, so the ack is lost for
certain; a real worker joins once the broker is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cluster_harness import make_engine
from pdserve.protocol import Subjects, WorkerHeartbeat, encode
from pdserve.sampling_params import SamplingParams
from pdserve.services.bus import BusOptions, connect
from pdserve.services.cluster_backend import ClusterBackend
from pdserve.services.colocated import ColocatedWorker
from pdserve.services.local_broker import local_broker_argv, nats_server_binary, wait_for_broker
from pdserve.serving.backend import GenerateRequest


def hole_beat(cluster: str) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id="hole-0",
        role="worker",
        pid=os.getpid(),
        host=socket.gethostname(),
        model="test",
        model_fingerprint="none",
        running=0,
        waiting=0,
        kv_blocks_used=0,
        kv_blocks_total=100,
        kv_block_size=16,
        max_model_len=2048,
        sent_at=time.time(),
        interval_s=0.2,
    )


async def test_a_task_lost_with_the_broker_is_served_once_it_is_back() -> None:
    ports_dir = Path(tempfile.mkdtemp(prefix="pdserve-nats-"))
    broker = subprocess.Popen(local_broker_argv(nats_server_binary(), ports_dir), stderr=subprocess.DEVNULL)
    url = wait_for_broker(broker, ports_dir, 10)
    assert url is not None
    port = url.rsplit(":", 1)[1]
    bus = BusOptions(url=url, cluster="lost")
    subjects = Subjects("lost")
    hole_nc = await connect(bus, name="hole")
    router_nc = await connect(bus, name="router")
    taken: list[str] = []
    worker: ColocatedWorker | None = None

    async def swallow(msg: object) -> None:
        taken.append("task")  # accepted, never answered

    async def beat() -> None:
        while True:
            await hole_nc.publish(subjects.heartbeat, encode(hole_beat("lost")))
            await asyncio.sleep(0.2)

    beating = asyncio.create_task(beat())
    backend = ClusterBackend(router_nc, subjects)
    try:
        await hole_nc.subscribe(subjects.task("hole-0"), cb=swallow)
        await backend.start()
        deadline = time.monotonic() + 10
        while not backend.ready() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert backend.ready()

        params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)

        async def serve() -> list[object]:
            request = GenerateRequest("lost-1", [5, 6, 7], params, time.time() + 60)
            return [chunk async for chunk in backend.generate(request)]

        served = asyncio.create_task(serve())
        while not taken and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert taken, "the task never reached the first worker"
        # The broker goes down while the router waits for the ack (2 s), and the worker that took
        # the task goes with it.
        beating.cancel()
        await hole_nc.close()
        broker.kill()
        broker.wait(10)
        await asyncio.sleep(0.5)
        broker = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", port], stderr=subprocess.DEVNULL)
        worker = ColocatedWorker(make_engine(None), bus, model_name="test", worker_id="worker-0", heartbeat_s=0.2)
        await worker.start()
        chunks = await asyncio.wait_for(served, 30)
        last = chunks[-1]
        assert not last.error, last.error  # type: ignore[attr-defined]
        assert last.finish_reason == "length"  # type: ignore[attr-defined]
        assert sum(len(c.token_ids) for c in chunks) == 5  # type: ignore[attr-defined]
    finally:
        beating.cancel()
        if worker is not None:
            with contextlib.suppress(Exception):
                await worker.close()
        await backend.close()
        for nc in (router_nc, hole_nc):
            with contextlib.suppress(Exception):
                await nc.close()
        broker.terminate()
        broker.wait(10)
