"""Offline throughput: pdserve's LLM.generate against Hugging Face generate() on the same weights.

    python ops/bench_offline.py --workload uniform   # 64 x (256 in, 64 out), greedy, ignore_eos
    python ops/bench_offline.py --workload mixed     # prompts 16..1024, outputs 8..256

Both engines run in this one process, one after the other, on the same random-weight 56M
Llama (hidden 512, intermediate 1376, 8 layers, 8 heads, 4 kv heads, vocab 32000) in bf16, so
the ratio printed at the end is measured under the same machine conditions; with --repeat N they
alternate N times and the ratio is that of the best times (other jobs' load only slows a run). Hugging Face gets
its best case: one batch of all prompts (left-padded when lengths differ), run until the
longest request is done; only requested output tokens count for either engine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCH_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}


def bench_model_path(cache: Path) -> Path:
    from pdserve.models import create_random_model

    path = cache / "bench-llama-56m"
    if not (path / "config.json").exists():
        print(f"creating the 56M benchmark model in {path}", flush=True)
        create_random_model(path, dict(BENCH_CONFIG), seed=0, dtype="bfloat16")
    return path


def workload(name: str, num_prompts: int, seed: int) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    vocab = int(BENCH_CONFIG["vocab_size"])  # type: ignore[call-overload]
    if name == "uniform":
        lengths, outputs = [256] * num_prompts, [64] * num_prompts
    elif name == "mixed":
        lengths = [rng.randint(16, 1024) for _ in range(num_prompts)]
        outputs = [rng.randint(8, 256) for _ in range(num_prompts)]
    else:
        raise SystemExit(f"unknown workload {name!r}: uniform or mixed")
    prompts = [[rng.randrange(300, vocab) for _ in range(n)] for n in lengths]
    return prompts, outputs


def pdserve_runner(
    path: Path, prompts: list[list[int]], outputs: list[int], dtype: str, budget: int
) -> Callable[[], float]:
    """Load the engine and warm it up; the returned function times one generate() of the workload (seconds)."""
    from pdserve import LLM, SamplingParams

    llm = LLM(path, dtype=dtype, max_num_batched_tokens=budget)
    llm.generate([prompts[0][:16]], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in outputs]

    def run() -> float:
        llm.engine.block_manager.reset_prefix_cache()
        start = time.perf_counter()
        results = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        produced = sum(len(r.token_ids) for r in results)
        assert produced == sum(outputs), (produced, sum(outputs))
        return elapsed

    return run


def hf_runner(path: Path, prompts: list[list[int]], outputs: list[int], dtype: str) -> Callable[[], float]:
    """Load the HF model and warm it up; the returned function times one batched generate() (seconds)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    model.generation_config.eos_token_id = None
    width = max(len(p) for p in prompts)
    pad = 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = GenerationConfig(max_new_tokens=max(outputs), do_sample=False, eos_token_id=None, pad_token_id=pad)
    warmup = GenerationConfig(max_new_tokens=2, do_sample=False, eos_token_id=None, pad_token_id=pad)
    with torch.inference_mode():
        model.generate(ids[:1, -16:], attention_mask=mask[:1, -16:], generation_config=warmup)

    @torch.inference_mode()
    def run() -> float:
        start = time.perf_counter()
        model.generate(ids, attention_mask=mask, generation_config=config)
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="uniform", choices=["uniform", "mixed"])
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-hf", action="store_true", help="time pdserve only")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each engine, alternating; best and median")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048, help="pdserve's per-step token budget")
    parser.add_argument("--cache", default=os.environ.get("PDSERVE_CACHE_DIR", str(Path.home() / ".cache/pdserve")))
    args = parser.parse_args()

    path = bench_model_path(Path(args.cache))
    prompts, outputs = workload(args.workload, args.num_prompts, args.seed)
    print(
        f"workload {args.workload}: {len(prompts)} prompts, {sum(map(len, prompts))} prompt tokens, "
        f"{sum(outputs)} output tokens, dtype {args.dtype}, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    tokens = sum(outputs)
    runners = {"pdserve": pdserve_runner(path, prompts, outputs, args.dtype, args.max_num_batched_tokens)}
    if not args.skip_hf:
        runners["hf"] = hf_runner(path, prompts, outputs, args.dtype)
    # Alternate the engines so that both see the same spells of load from other jobs on the machine.
    times: dict[str, list[float]] = {name: [] for name in runners}
    for rep in range(args.repeat):
        for name, run in runners.items():
            secs = run()
            times[name].append(secs)
            print(f"run {rep + 1}: {name:8s} {secs:7.2f} s  {tokens / secs:8.1f} output tok/s", flush=True)
    results: dict[str, object] = {}
    for name, secs_list in times.items():
        best, median = min(secs_list), statistics.median(secs_list)
        results[name] = {"seconds_best": round(best, 2), "seconds_median": round(median, 2),
                         "output_tok_s": round(tokens / best, 1)}  # fmt: skip
        print(f"{name:8s} best {best:7.2f} s  {tokens / best:8.1f} output tok/s (median {median:.2f} s)")
    if "hf" in times:
        # Load from other jobs only ever slows a run down, so the best times are the least disturbed.
        ratio = min(times["hf"]) / min(times["pdserve"])
        per_run = statistics.median(h / p for p, h in zip(times["pdserve"], times["hf"], strict=True))
        results["ratio"], results["ratio_median_of_runs"] = round(ratio, 2), round(per_run, 2)
        print(f"pdserve / HF: {ratio:.2f}x (best times), {per_run:.2f}x (median of runs)")
    print(json.dumps({"workload": args.workload, **results}))


if __name__ == "__main__":
    main()
