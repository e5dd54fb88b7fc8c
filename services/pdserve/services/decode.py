"""The decode worker: admits KV offers under a lease, receives the KV over UCX, decodes.

Admission reserves room in the block pool for the request (counted against later offers)
and a receive slot in the transfer plane; both are given back when the KV arrives and is
imported, or when the lease runs out. A refusal (full, draining, wrong layout) lets the
prefill worker try another decode worker at once.
"""

from __future__ import annotations

import structlog
from nats.aio.msg import Msg
from pdserve.engine.kv_transfer import KvExport, KvLayout
from pdserve.errors import InvalidRequestError, KvCapacityError, KvLayoutMismatchError, KvTransferError, ProtocolError
from pdserve.outputs import RequestOutput
from pdserve.protocol import KvAdmission, KvOffer, TokenChunk, decode, params_from_wire
from pdserve.protocol.top_logprobs import TopLogprobs, top_from_wire
from pdserve.sampling_params import SamplingParams
from pdserve.services.worker_base import WorkerBase
from pdserve.serving.chunks import chunk_from_output
from pdserve.transfer import KvReceiver

log = structlog.get_logger("pdserve.decode")

# What to do when admitted KV never arrives (the prefill worker died, the transfer broke) or
# cannot be imported: prefill the request here from the offer's tokens, or end it with a 502.
TRANSFER_FAILURE_POLICIES = ("recompute", "fail")


class DecodeWorker(WorkerBase):
    role = "decode"

    def __init__(
        self,
        *args: object,
        ucx_host: str = "127.0.0.1",
        ucx_port: int = 0,
        lease_s: float = 10.0,
        transfer_failure_policy: str = "recompute",
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if transfer_failure_policy not in TRANSFER_FAILURE_POLICIES:
            raise ValueError(f"transfer failure policy must be one of {TRANSFER_FAILURE_POLICIES}")
        self.transfer_failure_policy = transfer_failure_policy
        self.counters["recomputed"] = 0
        self.lease_s = lease_s
        self.receiver = KvReceiver(ucx_host, ucx_port, lease_timeout_s=lease_s)
        self.reserved_blocks = 0
        self.tickets: dict[str, int] = {}  # request id -> ticket, while its KV is in flight

    def ucx_address(self) -> str:
        return self.receiver.address

    async def start(self) -> None:
        await self.receiver.start()
        await super().start()

    async def subscribe_work(self) -> None:
        await self._subscribe(self.subjects.kv_offer(self.worker_id), self._on_offer)

    def busy(self) -> bool:
        return super().busy() or bool(self.tickets)

    async def _on_offer(self, msg: Msg) -> None:
        try:
            offer = decode(msg.data, KvOffer)
            params = params_from_wire(offer.params)
            layout = KvLayout.from_dict(offer.layout)
            first_top_logprobs(offer)
        except (ProtocolError, KvLayoutMismatchError) as exc:
            self.malformed(msg.subject, ProtocolError(str(exc)))
            await self._refuse(msg, f"malformed offer: {exc}", 400)
            return
        rid = offer.request_id
        ours = self.engine.kv_layout
        num_tokens = len(offer.prompt_token_ids)
        expected_nbytes = num_tokens * ours.bytes_per_token_per_layer
        blocks = self.engine.block_manager.blocks_needed(num_tokens + 1)
        problem = self.admission_error()
        if problem is not None:
            await self._refuse(msg, *problem)
            return
        try:
            ours.check_compatible(layout)
        except KvLayoutMismatchError as exc:
            await self._refuse(msg, str(exc), 400)
            return
        if offer.layer_nbytes != expected_nbytes:
            reason = f"layer_nbytes {offer.layer_nbytes} != {expected_nbytes} for {num_tokens} tokens"
            await self._refuse(msg, reason, 400)
            return
        if num_tokens + 1 >= self.engine.max_model_len:
            await self._refuse(msg, f"{num_tokens} tokens do not fit the context of {self.engine.max_model_len}", 400)
            return
        if rid in self.tickets or rid in self.streams:
            await self._refuse(msg, f"request {rid!r} is already here", 400)
            return
        try:
            self.engine.check_params(params)
        except InvalidRequestError as exc:
            await self._refuse(msg, str(exc), 400)
            return
        free = self.engine.block_manager.num_free_blocks - self.reserved_blocks
        if free < blocks:
            await self._refuse(msg, f"KV pool full ({free} free blocks, {blocks} needed)", 503)
            return
        shape = (2, num_tokens, ours.num_kv_heads, ours.head_dim)
        ticket = self.receiver.expect(rid, [shape] * ours.num_layers, ours.torch_dtype, self.engine.runner.device)
        self.reserved_blocks += blocks
        self.tickets[rid] = ticket.id
        self.streams[rid] = offer.stream_subject
        self.watch_deadline(rid, offer.deadline)
        admission = KvAdmission(True, ticket=ticket.id, ucx_address=self.receiver.address, lease_s=self.lease_s)
        await self.reply(msg, admission)
        self.spawn(self._receive(offer, params, ticket.id, blocks), name=f"receive-{rid}")

    async def _refuse(self, msg: Msg, reason: str, code: int) -> None:
        self.counters["refused"] += 1
        log.info("kv offer refused", reason=reason, code=code)
        await self.reply(msg, KvAdmission(False, reason=reason, code=code))

    async def _receive(self, offer: KvOffer, params: SamplingParams, ticket: int, blocks: int) -> None:
        rid = offer.request_id
        try:
            layers = await self.receiver.wait(ticket, timeout=self.lease_s)
        except KvTransferError as exc:
            layers, problem = None, f"KV transfer failed: {exc}"
        finally:
            self.reserved_blocks -= blocks
            self.tickets.pop(rid, None)
        if rid not in self.streams:
            return  # cancelled while the KV was in flight
        if layers is None:
            await self._transfer_failed(offer, params, problem)
            return
        export = KvExport(
            request_id=rid,
            layout=self.engine.kv_layout,
            prompt_token_ids=offer.prompt_token_ids,
            first_token=offer.first_token,
            first_logprob=offer.first_logprob,
            layers=layers,
            resumed_tokens=offer.resumed_tokens,
            first_top_logprobs=first_top_logprobs(offer),
        )
        try:
            await self.loop.call(lambda: self._import(export, params, offer.num_cached_tokens))
        except (KvCapacityError, KvLayoutMismatchError, InvalidRequestError) as exc:
            await self._transfer_failed(offer, params, f"decode worker could not import the KV: {exc}")
            return
        self.counters["accepted"] += 1
        log.info("kv imported", request_id=rid, tokens=len(offer.prompt_token_ids))

    async def _transfer_failed(self, offer: KvOffer, params: SamplingParams, problem: str) -> None:
        """Admitted KV that never arrived or would not import: recompute it here, or fail."""
        rid = offer.request_id
        first_index = offer.resumed_tokens
        if self.transfer_failure_policy == "fail":
            log.warning("kv lost; failing the request", request_id=rid, error=problem)
            await self.fail(rid, problem, 502, index=first_index + 1)
            return
        log.warning("kv lost; recomputing the prefill here", request_id=rid, error=problem)
        split = len(offer.prompt_token_ids) - offer.resumed_tokens
        prompt = offer.prompt_token_ids[:split]
        resume = [*offer.prompt_token_ids[split:], offer.first_token]
        try:
            await self.loop.call(lambda: self.engine.add_request(rid, prompt, params, resume_token_ids=resume))
        except InvalidRequestError as exc:
            await self.fail(rid, f"{problem}; recompute refused: {exc}", 502, index=first_index + 1)
            return
        self.counters["recomputed"] += 1
        # The prefill worker may have died before publishing the first token; the router drops
        # the duplicate if it did not.
        first = TokenChunk(rid, first_index, [offer.first_token], self.worker_id)
        if params.logprobs and offer.first_logprob is not None:
            first.logprobs = [offer.first_logprob]
        if params.top_logprobs and offer.first_top_token_ids is not None and offer.first_top_logprobs is not None:
            first.top_token_ids, first.top_logprobs = [offer.first_top_token_ids], [offer.first_top_logprobs]
        await self.publish_chunk(self.streams.get(rid, offer.stream_subject), first)

    def _import(self, export: KvExport, params: SamplingParams, cached_tokens: int) -> None:
        seq = self.engine.import_kv(export, params)
        seq.num_cached_tokens = cached_tokens  # prefix-cache hits happened on the prefill side

    async def _on_outputs(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            subject = self.streams.get(out.request_id)
            if subject is None:
                continue
            if out.finished:
                del self.streams[out.request_id]
            await self.publish_chunk(subject, chunk_from_output(out, self.worker_id), now=False)

    async def cancel(self, request_id: str) -> None:
        ticket = self.tickets.get(request_id)
        if ticket is not None:
            self.receiver.cancel(ticket)
        await super().cancel(request_id)

    async def close(self) -> None:
        await super().close()
        await self.receiver.close()


def first_top_logprobs(offer: KvOffer) -> TopLogprobs | None:
    """The first token's alternatives an offer carries (None: none asked for); ProtocolError if
    its two lists do not pair up."""
    ids, logprobs = offer.first_top_token_ids, offer.first_top_logprobs
    if ids is None and logprobs is None:
        return None
    if ids is None or logprobs is None:
        raise ProtocolError("KvOffer: first_top_token_ids and first_top_logprobs come together")
    return top_from_wire([ids], [logprobs], "KvOffer")[0]
