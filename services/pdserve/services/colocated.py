"""The colocated worker: prefill and decode in one engine, one process."""

from __future__ import annotations

from nats.aio.msg import Msg
from pdserve.outputs import RequestOutput
from pdserve.services.task_intake import take_task
from pdserve.services.worker_base import WorkerBase
from pdserve.serving.chunks import chunk_from_output


class ColocatedWorker(WorkerBase):
    role = "worker"

    async def subscribe_work(self) -> None:
        await self._subscribe(self.subjects.task(self.worker_id), self._on_task)

    async def _on_task(self, msg: Msg) -> None:
        await take_task(self, msg, hold_kv=False)

    async def _on_outputs(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            subject = self.streams.get(out.request_id)
            if subject is None:
                continue  # cancelled meanwhile
            if out.finished:
                del self.streams[out.request_id]
            await self.publish_chunk(subject, chunk_from_output(out, self.worker_id), now=False)
