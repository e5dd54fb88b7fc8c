"""The prefill worker: runs prompts, streams the first token, hands the KV to a decode worker.

Per request: the engine prefills and parks the sequence; its KV is copied out (and the blocks
freed at once, so prefill memory never waits on a slow peer); a decode worker admits a
KvOffer and returns a ticket; the first token is published; the KV is pushed over UCX.
If the chosen decode worker refuses, the others are tried by load; if none can take it the
request ends with a clear 503.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog
from nats.aio.msg import Msg
from pdserve.engine.kv_transfer import KvExport
from pdserve.errors import KvTransferError, ProtocolError
from pdserve.outputs import RequestOutput
from pdserve.protocol import GenerateTask, KvAdmission, KvOffer, decode, encode
from pdserve.protocol.top_logprobs import top_to_wire
from pdserve.sampling_params import SamplingParams
from pdserve.services.bus import send_now
from pdserve.services.cluster_view import ClusterView
from pdserve.services.task_intake import take_task
from pdserve.services.worker_base import WorkerBase
from pdserve.serving.chunks import chunk_from_output
from pdserve.transfer import KvSender, PushRefused, wire

log = structlog.get_logger("pdserve.prefill")

OFFER_TIMEOUT_S = 2.0
MAX_OFFER_TRIES = 3


@dataclass(slots=True)
class PendingHandoff:
    task: GenerateTask
    params: SamplingParams
    cancelled: bool = False


class PrefillWorker(WorkerBase):
    role = "prefill"

    def __init__(self, *args: object, push_timeout_s: float = 10.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.push_timeout_s = push_timeout_s
        self.pending: dict[str, PendingHandoff] = {}
        self.sender = KvSender()
        self.view: ClusterView | None = None

    async def subscribe_work(self) -> None:
        assert self.nc is not None
        self.view = ClusterView(self.nc, self.subjects)
        await self.view.start()
        await self._subscribe(self.subjects.task(self.worker_id), self._on_task)

    async def _on_task(self, msg: Msg) -> None:
        taken = await take_task(self, msg, hold_kv=True)
        if taken is not None:
            task, params = taken
            self.pending[task.request_id] = PendingHandoff(task, params)

    async def _on_outputs(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            rid = out.request_id
            pending = self.pending.get(rid)
            subject = self.streams.get(rid)
            if pending is None or subject is None:
                self.pending.pop(rid, None)  # cancelled before its first token
                continue
            if out.finished:
                # Done at the first token (eos, max_tokens=1) or aborted: nothing to hand off.
                self.pending.pop(rid, None)
                self.streams.pop(rid, None)
                await self.publish_chunk(subject, chunk_from_output(out, self.worker_id), now=False)
                continue
            self.spawn(self._hand_off(rid, pending, out), name=f"handoff-{rid}")

    async def _hand_off(self, rid: str, pending: PendingHandoff, first: RequestOutput) -> None:
        subject = pending.task.stream_subject
        try:
            export = await self.loop.call(lambda: self._export_and_release(rid))
            if pending.cancelled:
                return
            admitted = await self._find_decode_worker(pending, export, first)
            if admitted is None:
                await self.fail(rid, "no decode worker could take the request (all full or gone)", 503, index=0)
                return
            decode_worker, admission = admitted
            # From admission on, the decode worker owns the stream: it ends the request, or
            # recomputes it if our push never lands. The first token goes out now (time to first
            # token does not wait for the transfer) and names that owner, so the router knows
            # whose death to watch for.
            self.streams.pop(rid, None)
            chunk = chunk_from_output(first, self.worker_id)
            chunk.extra["decode_worker"] = decode_worker
            await self.publish_chunk(subject, chunk)
            started = time.perf_counter()
            await self.sender.push(admission.ucx_address, admission.ticket, export.layers, timeout=self.push_timeout_s)
            elapsed = time.perf_counter() - started
            log.info(
                "kv pushed",
                request_id=rid,
                decode_worker=decode_worker,
                bytes=export.nbytes,
                seconds=round(elapsed, 6),
                gbps=round(export.nbytes / max(elapsed, 1e-9) / 1e9, 3),
            )
        except KvTransferError as exc:
            # Not ours to report: the decode worker sees its ticket fail and applies its policy.
            if isinstance(exc, PushRefused) and exc.code in (wire.Code.UNKNOWN_TICKET, wire.Code.CANCELLED):
                # Its ticket ended first: the request was cancelled (its client went away), and the
                # cancel reached the decode worker before us. Nothing is lost.
                log.info("kv push refused: the decode worker ended the request", request_id=rid)
            else:
                log.warning("kv push failed; the decode worker takes over", request_id=rid, error=str(exc))
        except Exception:
            log.exception("hand-off failed", request_id=rid)
            await self.fail(rid, "internal error during KV hand-off", 500, index=len(first.token_ids) - 1)
        finally:
            self.pending.pop(rid, None)
            self.streams.pop(rid, None)

    def _export_and_release(self, rid: str) -> KvExport:
        """On the engine thread: copy the KV out, then free the blocks at once."""
        export = self.engine.export_kv(rid)
        self.engine.release_kv(rid)
        return export

    async def _find_decode_worker(
        self, pending: PendingHandoff, export: KvExport, first: RequestOutput
    ) -> tuple[str, KvAdmission] | None:
        assert self.nc is not None and self.view is not None
        task = pending.task
        offer = KvOffer(
            request_id=task.request_id,
            prompt_token_ids=export.prompt_token_ids,
            first_token=export.first_token,
            params=task.params,
            layout=export.layout.to_dict(),
            layer_nbytes=export.layers[0].numel() * export.layers[0].element_size(),
            stream_subject=task.stream_subject,
            deadline=task.deadline,
            first_logprob=export.first_logprob,
            num_cached_tokens=first.num_cached_tokens,
            resumed_tokens=export.resumed_tokens,
        )
        if export.first_top_logprobs is not None:
            [offer.first_top_token_ids], [offer.first_top_logprobs] = top_to_wire([export.first_top_logprobs])
        payload = encode(offer)
        candidates = [task.decode_worker] if task.decode_worker else []
        candidates += [b.worker_id for b in self.view.by_load(("decode",)) if b.worker_id != task.decode_worker]
        for worker_id in candidates[:MAX_OFFER_TRIES]:
            try:
                # request() leaves the offer to nats-py's flusher task; this sends it on the loop's
                # next turn instead, ahead of that task (the offer is on the path of the first token).
                asyncio.get_running_loop().call_soon(send_now, self.nc)
                reply = await self.nc.request(self.subjects.kv_offer(worker_id), payload, timeout=OFFER_TIMEOUT_S)
                admission = decode(reply.data, KvAdmission)
            except (TimeoutError, ProtocolError) as exc:
                log.warning("kv offer unanswered", request_id=task.request_id, decode_worker=worker_id, error=repr(exc))
                continue
            except Exception as exc:  # no responders, broker reconnecting
                log.warning("kv offer failed", request_id=task.request_id, decode_worker=worker_id, error=repr(exc))
                continue
            if admission.accepted:
                return worker_id, admission
            log.info("kv offer refused", request_id=task.request_id, decode_worker=worker_id, reason=admission.reason)
        return None

    async def cancel(self, request_id: str) -> None:
        pending = self.pending.get(request_id)
        if pending is not None:
            pending.cancelled = True
        await super().cancel(request_id)

    async def close(self) -> None:
        await super().close()
        await self.sender.close()
