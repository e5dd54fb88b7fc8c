"""Device memory: layers in CUDA memory on both sides (skipped without a GPU)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from pdserve.transfer import KvReceiver, KvSender
from transfer_cases import random_layers, shapes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
async def test_cuda_layers_arrive_bit_for_bit(receiver: KvReceiver, sender: KvSender, dtype) -> None:  # type: ignore[no-untyped-def]
    layers = [t.cuda() for t in random_layers(4, tokens=256, dtype=dtype, heads=8, head_dim=128)]
    ticket = receiver.expect("gpu", shapes(layers), dtype, device="cuda")
    waiting = asyncio.create_task(receiver.wait(ticket.id, timeout=10))
    await sender.push(receiver.address, ticket.id, layers, timeout=10)
    got = await waiting
    assert all(t.is_cuda for t in got)
    assert all(torch.equal(a, b) for a, b in zip(layers, got, strict=True))
