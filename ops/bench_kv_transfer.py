"""KV transfer bandwidth between two processes on this host: KvSender -> KvReceiver, raw ucxx
send/recv of one buffer, and a numpy memcpy, side by side, with UCX peer error handling on and off.

    python ops/bench_kv_transfer.py [--sizes-mib 1 16 64] [--layers 8] [--reps 10]

Each size is one request split into --layers equal float32 layers. Reported: median GB/s
(1e9 bytes/s) over --reps repetitions after one warm-up. KvSender time is push() (hello,
ready, layers, verdict) into a fresh ticket per request, as a decode worker does (its receive
buffers are new memory each time); raw time is one tagged send of the whole request into a
reused buffer plus an 8-byte ack. The receiver runs in a spawned process.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import time
from multiprocessing.connection import Connection

import numpy as np
import torch

MIB = 1 << 20
RAW_TAG, ACK_TAG = 0x5044, 0x5045


def _layer_shapes(nbytes: int, layers: int) -> list[tuple[int, ...]]:
    per_layer = nbytes // layers // 4  # float32 elements
    return [(2, per_layer // 2)] * layers


def receiver_main(conn: Connection, error_handling: bool) -> None:
    """Child process: a KvReceiver and a raw ucxx listener, driven by commands on `conn`."""
    asyncio.run(_receiver(conn, error_handling))


async def _receiver(conn: Connection, error_handling: bool) -> None:
    import ucxx._lib.libucxx as ucx_api
    from pdserve.transfer import KvReceiver
    from pdserve.transfer.link import Link

    loop = asyncio.get_running_loop()
    receiver = KvReceiver(error_handling=error_handling, lease_timeout_s=60.0)
    await receiver.start()
    from pdserve.transfer import runtime

    rt = runtime.acquire()
    requests: asyncio.Queue[int] = asyncio.Queue()
    listener = ucx_api.UCXListener.create(
        worker=rt.worker,
        port=0,
        cb_func=lambda cr: loop.call_soon_threadsafe(requests.put_nowait, cr),
        deliver_endpoint=False,
    )
    conn.send((receiver.address, listener.port))
    raw: Link | None = None
    while True:
        cmd, *args = await loop.run_in_executor(None, conn.recv)
        if cmd == "expect":
            # One ticket at a time, buffers dropped after use: what a decode worker does.
            (shapes,) = args
            ticket = receiver.expect("bench", shapes, torch.float32)
            conn.send(ticket.id)
            await receiver.wait(ticket.id, timeout=60.0)
            conn.send("taken")
        elif cmd == "raw":
            nbytes, count = args
            if raw is None:
                endpoint = listener.create_endpoint_from_conn_request(await requests.get(), error_handling)
                raw = Link(rt, endpoint, "bench sender")
            buf, ack = torch.empty(nbytes, dtype=torch.uint8), torch.ones(8, dtype=torch.uint8)
            conn.send("ready")
            for _ in range(count):
                await raw.post_recv_tensor(buf, RAW_TAG)
                await raw.post_send_tensor(ack, ACK_TAG)
        elif cmd == "stop":
            conn.send(receiver.stats.as_dict())
            break
    if raw is not None:
        raw.close()
    del listener
    runtime.release(rt)
    await receiver.close()


async def _sender(conn: Connection, args: argparse.Namespace, error_handling: bool) -> dict[str, list[float]]:
    import ucxx._lib.libucxx as ucx_api
    from pdserve.transfer import KvSender, runtime
    from pdserve.transfer.link import Link

    loop = asyncio.get_running_loop()
    address, raw_port = await loop.run_in_executor(None, conn.recv)
    sender = KvSender(error_handling=error_handling)
    rt = runtime.acquire()
    raw = Link(rt, ucx_api.UCXEndpoint.create(rt.worker, "127.0.0.1", raw_port, error_handling), "bench receiver")
    results: dict[str, list[float]] = {}
    for mib in args.sizes_mib:
        nbytes = mib * MIB
        shapes = _layer_shapes(nbytes, args.layers)
        layers = [torch.randn(shape) for shape in shapes]
        actual = sum(t.numel() * t.element_size() for t in layers)
        count = args.reps + 1
        times = []
        for _ in range(count):
            conn.send(("expect", shapes))
            ticket = await loop.run_in_executor(None, conn.recv)
            times.append(await sender.push(address, ticket, layers, timeout=60.0))
            await loop.run_in_executor(None, conn.recv)
        results[f"kv {mib}"] = [actual / t / 1e9 for t in times[1:]]

        payload, ack = torch.randn(nbytes // 4).view(torch.uint8), torch.empty(8, dtype=torch.uint8)
        conn.send(("raw", nbytes, count))
        await loop.run_in_executor(None, conn.recv)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            await raw.post_send_tensor(payload, RAW_TAG)
            await raw.post_recv_tensor(ack, ACK_TAG)
            times.append(time.perf_counter() - started)
        results[f"raw {mib}"] = [nbytes / t / 1e9 for t in times[1:]]
    conn.send(("stop",))
    results["_stats"] = await loop.run_in_executor(None, conn.recv)  # type: ignore[assignment]
    raw.close()
    runtime.release(rt)
    await sender.close()
    return results


def memcpy_gbps(nbytes: int, reps: int) -> list[float]:
    src = np.random.randint(0, 255, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        np.copyto(dst, src)
        out.append(nbytes / (time.perf_counter() - started) / 1e9)
    return out


def run_mode(args: argparse.Namespace, error_handling: bool) -> dict[str, list[float]]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=receiver_main, args=(child, error_handling), daemon=True)
    proc.start()
    try:
        return asyncio.run(_sender(parent, args, error_handling))
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--modes", choices=["on", "off"], nargs="+", default=["on", "off"])
    args = parser.parse_args()

    print(f"host: {os.cpu_count()} CPUs, torch {torch.__version__}, UCX_TLS={os.environ.get('UCX_TLS', '(unset)')}")
    rows: dict[str, dict[str, float]] = {}
    for mib in args.sizes_mib:
        rows.setdefault("numpy memcpy (1 process)", {})[str(mib)] = statistics.median(memcpy_gbps(mib * MIB, args.reps))
    for mode in args.modes:
        results = run_mode(args, error_handling=mode == "on")
        stats = results.pop("_stats")
        print(f"error handling {mode}: transport {stats['transport']}")  # type: ignore[call-overload]
        for key, values in results.items():
            kind, mib = key.split()
            label = {"kv": "KvSender -> KvReceiver", "raw": "raw ucxx tag send+ack"}[kind]
            rows.setdefault(f"{label}, error handling {mode}", {})[mib] = statistics.median(values)

    width = max(len(label) for label in rows)
    print(f"\nmedian GB/s over {args.reps} reps, {args.layers} layers per request")
    print(f"{'':{width}} " + " ".join(f"{str(m) + ' MiB':>9}" for m in args.sizes_mib))
    for label, by_size in rows.items():
        print(f"{label:{width}} " + " ".join(f"{by_size[str(m)]:9.2f}" for m in args.sizes_mib))


if __name__ == "__main__":
    main()
