"""Micro-benchmark of the engine's linear layers: torch's F.linear against a weight packed once for
oneDNN (engine/packed_linear.py), on the bench model's projection shapes.

    python ops/bench_linear.py [--rows 64 2048] [--iters 50] [--threads 2] [--dtype bfloat16]

Prints the median microseconds per call of each, taking turns call by call, and checks that the
two give bit-identical results.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from pdserve.engine.packed_linear import PackedLinear

# (out, in) of the 56M bench model (hidden 512, 8 heads over 4 kv heads, MLP 1376, vocab 32000).
SHAPES = {
    "qkv": (1024, 512),
    "o_proj": (512, 512),
    "gate/up": (1376, 512),
    "down": (512, 1376),
    "lm_head": (32000, 512),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 2048])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"{'rows':>5} {'layer':8} {'F.linear us':>12} {'packed us':>10} {'packed/F':>9} identical")
    for rows in args.rows:
        for name, (out_features, in_features) in SHAPES.items():
            if name == "lm_head" and rows > 256:
                continue  # the engine runs lm_head on the sampling rows only
            x = torch.randn(rows, in_features).to(dtype)
            weight = torch.randn(out_features, in_features).to(dtype)
            packed = PackedLinear(weight, None)
            identical = torch.equal(packed(x), F.linear(x, weight))
            times: dict[str, list[float]] = {"plain": [], "packed": []}
            for i in range(args.iters + 5):
                for key in times:
                    start = time.perf_counter()
                    if key == "plain":
                        F.linear(x, weight)
                    else:
                        packed(x)
                    if i >= 5:
                        times[key].append((time.perf_counter() - start) * 1e6)
            plain, fast = statistics.median(times["plain"]), statistics.median(times["packed"])
            print(f"{rows:>5} {name:8} {plain:>12.1f} {fast:>10.1f} {fast / plain:>9.2f} {identical}")


if __name__ == "__main__":
    main()
