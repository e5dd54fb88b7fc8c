"""GPU check (issue 5): prefill MFU, decode memory-bandwidth use, Triton kernels and KV transfer
over UCX between two processes, on whatever CUDA card this runs on. Run by ops/gpu_check.sh.

    python ops/gpu_check.py [--layers 22] [--skip-pytest]

Model: a random-weight Llama (hidden 2048, 32 heads, 8 kv heads, intermediate 5632, vocab
32000, 22 layers: 1.1B parameters) in bf16, written to a temp dir and served by LLMEngine.

- prefill: 32 distinct random 1024-token prompts, max_tokens 1, prefix caching off; FLOPs =
  2 x (non-embedding parameters) per token + causal attention (2 x layers x L^2 x hidden per
  prompt) + the LM head for each prompt's last token. MFU against the card's dense bf16 peak.
- decode: batch 1, 32 and 128 at 512 tokens of context; bytes per step = every weight read once
  (embedding rows aside) + each sequence's KV; against the card's HBM peak.
- kernels: `pytest -m gpu tests/kernels tests/transfer` (Triton kernels against the reference,
  CUDA KV bit for bit).
- transfer: KvSender in this process -> KvReceiver in a spawned one, CUDA tensors on both sides,
  16/64/256 MiB per request in 22 layers; median GB/s (1e9 bytes/s) of push().

Every phase has a time bound; a JSON summary is the last line printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

MIB = 1 << 20
# Dense bf16 tensor-core TFLOP/s and HBM TB/s from the vendors' data sheets, by device name.
PEAKS: list[tuple[tuple[str, ...], float, float]] = [
    (("H200",), 989.0, 4.8),
    (("H100", "HBM3"), 989.0, 3.35),  # SXM reports itself as "NVIDIA H100 80GB HBM3"
    (("H100", "SXM"), 989.0, 3.35),
    (("A100", "80GB"), 312.0, 2.0),
    (("A100",), 312.0, 1.555),
]
LLAMA_1B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 5632,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


def peaks(name: str) -> tuple[float, float] | None:
    """(bf16 TFLOP/s, HBM TB/s) of a known card, else None."""
    for words, tflops, tbps in PEAKS:
        if all(w in name for w in words):
            return tflops, tbps
    return None


def checkpoint_parameters(model: Path) -> int:
    """Parameters in the checkpoint's safetensors files. Not `model.parameters()` after loading:
    on CPU the engine packs bf16 linear weights for oneDNN and leaves the modules' own weights
    empty, so they would count as zero."""
    from pdserve.models.model_dir import weight_files
    from safetensors import safe_open

    total = 0
    for path in weight_files(model):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += math.prod(f.get_slice(name).get_shape())
    return total


def run_engine(model: Path, layers: int, device: str, scale: int) -> dict[str, Any]:
    """`scale` divides every size (1 on a GPU; the CPU smoke test runs the same code small)."""
    from pdserve.engine.config import EngineConfig
    from pdserve.engine.llm_engine import LLMEngine
    from pdserve.sampling_params import SamplingParams

    # 16 GiB of KV on the card; the CPU smoke test shares a small machine (16 GiB there got it OOM-killed).
    kv_bytes = 16 << 30 if scale == 1 else 256 << 20
    config = EngineConfig(kv_cache_bytes=kv_bytes, max_num_batched_tokens=8192 // scale, enable_prefix_caching=False)
    engine = LLMEngine.from_model(model, dtype="bfloat16", device=device, config=config)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    loaded = engine.loaded
    hidden, vocab = loaded.config.hidden_size, loaded.vocab_size
    params = checkpoint_parameters(model)
    embedding = vocab * hidden
    kv_bytes_per_token = layers * 2 * loaded.num_kv_heads * loaded.head_dim * 2  # K and V, bf16
    rng = torch.Generator().manual_seed(0)
    counter = iter(range(1 << 30))

    def run(prompts: int, prompt_len: int, max_tokens: int) -> set[str]:
        params_ = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        ids = set()
        for _ in range(prompts):
            rid = f"r{next(counter)}"
            engine.add_request(rid, torch.randint(300, vocab, (prompt_len,), generator=rng).tolist(), params_)
            ids.add(rid)
        return ids

    def drain() -> None:
        while engine.has_unfinished():
            engine.step()
        sync()

    # Prefill: every step is 8192 prompt tokens; the first round warms up kernels and allocator.
    n, length = 32 // scale, 1024 // scale
    prefill_s = []
    for _ in range(3):
        run(n, length, 1)
        started = time.perf_counter()
        drain()
        prefill_s.append(time.perf_counter() - started)
    seconds = statistics.median(prefill_s[1:])
    # Linear layers for every token (the LM head only for the last), causal attention.
    body = params - 2 * embedding  # untied: input embedding and LM head are both vocab x hidden
    flops = n * (2 * body * length + 2 * embedding + 2 * layers * length * length * hidden)
    tflops = flops / seconds / 1e12

    decode: dict[str, Any] = {}
    context, steps = 512 // scale, 32 // scale
    for batch in (1, 32 // scale, 128 // scale):
        prefilling = run(batch, context, steps + 4)
        while prefilling:  # a large batch's prompts take several steps
            prefilling -= {out.request_id for out in engine.step()}
        engine.step()  # one decode step to warm up this batch shape
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            engine.step()
        sync()
        step_s = (time.perf_counter() - started) / steps
        drain()
        kv = batch * (context + 2 + steps // 2) * kv_bytes_per_token  # mean context over the timed steps
        moved = (params - embedding) * 2 + kv  # every weight but the embedding table, bf16
        decode[str(batch)] = {
            "step_ms": round(step_s * 1e3, 3),
            "tokens_per_s": round(batch / step_s, 1),
            "gb_per_step": round(moved / 1e9, 3),
            "achieved_tb_s": round(moved / step_s / 1e12, 3),
        }
    return {
        "parameters": params,
        "prefill": {
            "prompts": n,
            "prompt_tokens": length,
            "seconds": round(seconds, 4),
            "tflops": round(tflops, 3),
            "tokens_per_s": round(n * length / seconds),
        },
        "decode": decode,
    }


def _receiver_main(conn: Connection, device: str) -> None:
    from pdserve.log_setup import configure_logging

    configure_logging("gpu-check-receiver", "warning")  # not a line per transfer
    asyncio.run(_receiver(conn, device))


async def _receiver(conn: Connection, device: str) -> None:
    from pdserve.transfer import KvReceiver

    loop = asyncio.get_running_loop()
    receiver = KvReceiver(lease_timeout_s=60.0)
    await receiver.start()
    conn.send(receiver.address)
    while (shapes := await loop.run_in_executor(None, conn.recv)) is not None:
        ticket = receiver.expect("gpu-check", shapes, torch.bfloat16, device=device)
        conn.send(ticket.id)
        await receiver.wait(ticket.id, timeout=60.0)
        conn.send("taken")
    conn.send(receiver.stats.as_dict())
    await receiver.close()


async def _sender(conn: Connection, sizes_mib: list[int], layers: int, reps: int, device: str) -> dict[str, Any]:
    from pdserve.transfer import KvSender

    loop = asyncio.get_running_loop()
    address = await loop.run_in_executor(None, conn.recv)
    sender = KvSender()
    out: dict[str, Any] = {}
    for mib in sizes_mib:
        per_layer = mib * MIB // layers // 2  # bf16 elements
        tensors = [torch.randn(2, per_layer // 2, device=device, dtype=torch.bfloat16) for _ in range(layers)]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        rates = []
        for _ in range(reps + 1):
            conn.send([tuple(t.shape) for t in tensors])
            ticket = await loop.run_in_executor(None, conn.recv)
            rates.append(nbytes / await sender.push(address, ticket, tensors, timeout=60.0) / 1e9)
            await loop.run_in_executor(None, conn.recv)
        out[f"{mib} MiB"] = round(statistics.median(rates[1:]), 2)
    conn.send(None)
    out["transport"] = (await loop.run_in_executor(None, conn.recv)).get("transport")
    await sender.close()
    return out


def run_transfer(sizes_mib: list[int], layers: int, reps: int, device: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver_main, args=(child, device), daemon=True)
    proc.start()
    try:
        return asyncio.run(asyncio.wait_for(_sender(parent, sizes_mib, layers, reps, device), timeout=150))
    finally:
        proc.join(timeout=20)
        if proc.is_alive():
            proc.kill()


def run_pytest(timeout_s: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    argv += ["tests/kernels", "tests/transfer"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": f"timed out after {timeout_s} s"}
    print(done.stdout[-3000:], done.stderr[-2000:], sep="\n")
    lines = done.stdout.strip().splitlines()
    return {"ok": done.returncode == 0, "summary": lines[-1] if lines else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--transfer-reps", type=int, default=5)
    parser.add_argument("--skip-pytest", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true", help="run every phase small on the CPU (tests the script)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu_check: no CUDA device here; nothing measured", file=sys.stderr)
        return 2
    from pdserve.log_setup import configure_logging
    from pdserve.models import create_random_model

    configure_logging("gpu-check", "warning")
    device, scale = ("cpu", 16) if args.cpu_smoke else ("cuda", 1)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke test)"
    summary: dict[str, Any] = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda}
    print(f"device: {name}", flush=True)
    card = peaks(name)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        started = time.perf_counter()
        config = {**LLAMA_1B, "num_hidden_layers": args.layers}
        if scale > 1:
            config.update(hidden_size=256, intermediate_size=704, num_attention_heads=4, num_key_value_heads=2)
        model = create_random_model(Path(tmp) / "llama-1b", config, dtype="bfloat16")
        print(f"model written in {time.perf_counter() - started:.1f} s", flush=True)
        summary["engine"] = run_engine(model, args.layers, device, scale)
    if card is not None:
        tflops, tbps = card
        summary["peak"] = {"bf16_tflops": tflops, "hbm_tb_s": tbps}
        summary["engine"]["prefill"]["mfu"] = round(summary["engine"]["prefill"]["tflops"] / tflops, 3)
        for row in summary["engine"]["decode"].values():
            row["bandwidth_utilisation"] = round(row["achieved_tb_s"] / tbps, 3)
    else:
        summary["peak"] = f"unknown card {name!r}: raw TFLOP/s and TB/s only"
    print(json.dumps(summary["engine"]), flush=True)
    sizes = [16, 64, 256] if scale == 1 else [1, 4]
    summary["kv_transfer_gb_s"] = run_transfer(sizes, args.layers, args.transfer_reps, device)
    print(json.dumps(summary["kv_transfer_gb_s"]), flush=True)
    if not args.skip_pytest:
        summary["gpu_tests"] = run_pytest(timeout_s=150)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
