"""Receiving a GenerateTask: decode, validate, admit into the engine, acknowledge."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from nats.aio.msg import Msg
from pdserve.errors import InvalidRequestError, ProtocolError
from pdserve.protocol import GenerateTask, TaskAck, decode, params_from_wire
from pdserve.protocol.top_logprobs import check_prompt_logprobs_size
from pdserve.sampling_params import SamplingParams
from pdserve.services.worker_base import WorkerBase

log = structlog.get_logger("pdserve.task")


async def take_task(worker: WorkerBase, msg: Msg, *, hold_kv: bool) -> tuple[GenerateTask, SamplingParams] | None:
    """Admit the task in `msg` into the worker's engine and ack it; None if refused."""
    try:
        task = decode(msg.data, GenerateTask)
        params = params_from_wire(task.params)
    except ProtocolError as exc:
        worker.malformed(msg.subject, exc)
        await worker.refuse(msg, f"malformed task: {exc}", 400)
        return None
    rid = task.request_id
    problem = worker.admission_error()
    if problem is not None:
        await worker.refuse(msg, *problem)
        return None
    if task.deadline < time.time():
        await worker.refuse(msg, "deadline already passed", 504)
        return None
    if rid in worker.streams:
        await worker.refuse(msg, f"request id {rid!r} is already running here", 400)
        return None
    try:
        # Validated here, on the event loop (read-only), so the ack need not wait for a step.
        tokens = worker.engine.tokenize(task.prompt_token_ids, params.truncate_prompt_tokens)
        worker.engine.check_params(params)
        check_prompt_logprobs_size(len(tokens), params)
        resume = task.resume_token_ids
        if resume:
            worker.engine.check_resume(len(tokens), resume, params)
    except InvalidRequestError as exc:
        await worker.refuse(msg, str(exc), 400)
        return None
    # Register the stream before the engine can produce output for it.
    worker.streams[rid] = task.stream_subject
    worker.watch_deadline(rid, task.deadline)
    added = worker.loop.submit(
        lambda: worker.engine.add_request(rid, tokens, params, hold_kv=hold_kv, resume_token_ids=resume)
    )
    added.add_done_callback(lambda f: _added(worker, rid, f))
    worker.counters["accepted"] += 1
    # Held back a moment when the first chunk can answer for it (see task_ack.py).
    await worker.acks.ack(rid, msg, TaskAck(accepted=True, worker_id=worker.worker_id), task.stream_subject)
    log.info("task accepted", request_id=rid, prompt_tokens=len(tokens), resumed_tokens=len(resume))
    return task, params


def _added(worker: WorkerBase, rid: str, future: asyncio.Future[Any]) -> None:
    """The engine refused a request we already acknowledged (it passed our checks): end it."""
    if future.cancelled() or future.exception() is None:
        return
    log.warning("engine refused an acknowledged request", request_id=rid, error=str(future.exception()))
    worker.spawn(worker.fail(rid, f"request could not be started: {future.exception()}", 400), name=f"fail-{rid}")
