"""Across processes, as in production: 16 MiB arrives intact, and a sender killed mid-push
leaves the receiver alive with a failed ticket (with error handling off, UCX aborts it)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys

import pytest
import torch
from pdserve.transfer import KvReceiver, KvTransferError
from transfer_cases import random_layers, shapes

# The receiver side, in a fresh interpreter: prints its address, takes one ticket request on
# stdin, prints the ticket id, then the sha256 of every byte it received.
RECEIVER = """
import asyncio, hashlib, json, sys, torch
from pdserve.transfer import KvReceiver

async def main():
    receiver = KvReceiver(lease_timeout_s=20)
    await receiver.start()
    print(json.dumps({"address": receiver.address}), flush=True)
    loop = asyncio.get_running_loop()
    request = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    shapes = [tuple(s) for s in request["shapes"]]
    ticket = receiver.expect("cross", shapes, getattr(torch, request["dtype"]))
    print(json.dumps({"ticket": ticket.id}), flush=True)
    layers = await receiver.wait(ticket.id, timeout=20)
    digest = hashlib.sha256()
    for t in layers:
        digest.update(t.view(torch.uint8).numpy().tobytes())
    print(json.dumps({"sha256": digest.hexdigest()}), flush=True)
    await receiver.close()

asyncio.run(main())
"""

# The sender side: pushes 512 MiB to the address and ticket given on argv, and is SIGKILLed
# (by itself, from a timer thread: the receiver's loop is busy copying) 30 ms into the push.
SENDER = """
import asyncio, os, signal, sys, threading, torch
from pdserve.transfer import KvSender

async def main():
    layers = [torch.ones(64 << 20, dtype=torch.uint8) for _ in range(8)]
    sender = KvSender()
    threading.Timer(0.03, os.kill, (os.getpid(), signal.SIGKILL)).start()
    await sender.push(sys.argv[1], int(sys.argv[2]), layers, timeout=30)
    print("pushed", flush=True)

asyncio.run(main())
"""


async def _spawn(code: str, *args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, UCX_WARN_UNUSED_ENV_VARS="n")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
    )


async def _json_line(proc: asyncio.subprocess.Process, timeout: float = 30) -> dict[str, object]:
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise AssertionError("child exited early")
        if line.startswith(b"{"):
            return json.loads(line)  # type: ignore[no-any-return]


async def test_16_mib_to_a_receiver_in_another_process(sender) -> None:  # type: ignore[no-untyped-def]
    layers = random_layers(8, tokens=1024, dtype=torch.bfloat16, heads=8, head_dim=64, seed=3)
    assert sum(t.numel() * t.element_size() for t in layers) == 16 << 20
    proc = await _spawn(RECEIVER)
    try:
        address = str((await _json_line(proc))["address"])
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"shapes": shapes(layers), "dtype": "bfloat16"}).encode() + b"\n")
        await proc.stdin.drain()
        ticket = int((await _json_line(proc))["ticket"])  # type: ignore[call-overload]
        seconds = await sender.push(address, ticket, layers, timeout=20)
        expected = hashlib.sha256(b"".join(t.view(torch.uint8).numpy().tobytes() for t in layers)).hexdigest()
        assert (await _json_line(proc))["sha256"] == expected
        assert seconds < 10
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sender_killed_mid_push_leaves_the_receiver_alive() -> None:
    receiver = KvReceiver(lease_timeout_s=20)
    await receiver.start()
    proc = None
    try:
        ticket = receiver.expect("doomed", [(64 << 20,)] * 8, torch.uint8)
        proc = await _spawn(SENDER, receiver.address, str(ticket.id))
        with pytest.raises(KvTransferError):
            await receiver.wait(ticket.id, timeout=20)
        assert await asyncio.wait_for(proc.wait(), 20) == -signal.SIGKILL
        assert receiver.stats.transfers_failed == 1
        assert receiver.active_tickets == 0 and receiver.reserved_bytes == 0
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
        if proc is not None:
            await proc.wait()
        await receiver.close()
