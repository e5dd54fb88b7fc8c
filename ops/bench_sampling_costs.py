"""What sampling options cost: logprobs, top alternatives, penalties and logit bias (engine
throughput), prompt scoring, JSON mode and structured output, and putting logprobs into OpenAI's
shapes (router).

JSON mode (`json_object`) and structured output (`json_schema`, a small extraction schema): the
same 32 prompts, greedy and sampled, in ms per generated token, since a grammar may end a
request before max_tokens.

Also prompt scoring (`prompt_logprobs`, what `echo` with `logprobs` asks for): 32 prompts of 256
tokens with one output token, plain against scored (lm_head over every prompt position, no prefix
cache), taking turns.

Engine: 32 prompts of 64 tokens, 64 greedy output tokens each, through `LLM.generate` with no
logprobs, the chosen tokens' logprobs, and 5 or 20 alternatives per token; the cases take turns
in a fresh random order each repetition and the medians are compared in the same run. Router:
the time to turn one request's 64 tokens (and k alternatives each) into OpenAI's completions and
chat logprobs shapes, per token.

    python ops/bench_sampling_costs.py [--model DIR] [--reps 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from pdserve import LLM, SamplingParams
from pdserve.services.router.logprobs import TokenTexts, chat_logprobs, completion_logprobs

CASES: dict[str, dict[str, object]] = {
    "none": {},
    "logprobs": {"logprobs": True},
    "top5": {"top_logprobs": 5},
    "top20": {"top_logprobs": 20},
    "penalties": {"presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.2},
    "bias": {"logit_bias": {i: -5.0 for i in range(100)}},
}
PROMPTS, PROMPT_LEN, OUTPUT_LEN = 32, 64, 64


def engine_costs(llm: LLM, reps: int, rng: random.Random) -> None:
    vocab = llm.engine.loaded.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(PROMPT_LEN)] for _ in range(PROMPTS)]
    llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for rep in range(reps):
        order = list(CASES)
        rng.shuffle(order)
        for name in order:
            params = SamplingParams(max_tokens=OUTPUT_LEN, temperature=0.0, ignore_eos=True, **CASES[name])  # type: ignore[arg-type]
            started = time.perf_counter()
            llm.generate(prompts, params)
            times[name].append(time.perf_counter() - started)
        print(f"repetition {rep + 1}/{reps} done", flush=True)
    base = statistics.median(times["none"])
    for name, values in times.items():
        median = statistics.median(values)
        tokens_per_s = PROMPTS * OUTPUT_LEN / median
        print(
            f"engine {name:9s} median {median * 1000:7.1f} ms  {tokens_per_s:8.0f} tokens/s  {median / base:5.2f}x none"
        )


def prompt_scoring_costs(llm: LLM, reps: int, rng: random.Random) -> None:
    vocab = llm.engine.loaded.vocab_size
    cases: dict[str, dict[str, object]] = {"plain": {}, "scored k=1": {"prompt_logprobs": 1}}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        # Fresh prompts each time: the plain case must not be served from the prefix cache.
        prompts = [[rng.randrange(vocab) for _ in range(256)] for _ in range(PROMPTS)]
        order = list(cases)
        rng.shuffle(order)
        for name in order:
            batch = [[len(name), *p] for p in prompts]  # per case: neither hits the other's cached blocks
            params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, **cases[name])  # type: ignore[arg-type]
            started = time.perf_counter()
            llm.generate(batch, params)
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["plain"])
    for name, values in times.items():
        median = statistics.median(values)
        rate = PROMPTS * 257 / median
        print(
            f"prompts {name:10s} median {median * 1000:7.1f} ms  {rate:8.0f} prompt tok/s  {median / base:5.2f}x plain"
        )


# A typical extraction schema: strings with bounds, an integer, an enum, an optional array.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
    },
    "required": ["name", "age", "color"],
    "additionalProperties": False,
}
GRAMMARS: dict[str, dict[str, object]] = {
    "none": {},
    "json_object": {"json_object": True},
    "json_schema": {"json_schema": SCHEMA},
}


def grammar_costs(llm: LLM, reps: int, rng: random.Random) -> None:
    """JSON mode and structured output, per generated token (a grammar may end a request early)."""
    vocab = llm.engine.loaded.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(PROMPT_LEN)] for _ in range(PROMPTS)]
    for mode, sampling in (("greedy", {"temperature": 0.0}), ("sampled", {"temperature": 1.0, "seed": 1})):
        per_token: dict[str, list[float]] = {name: [] for name in GRAMMARS}
        for _ in range(reps):
            order = list(GRAMMARS)
            rng.shuffle(order)
            for name in order:
                params = SamplingParams(max_tokens=OUTPUT_LEN, ignore_eos=True, **sampling, **GRAMMARS[name])  # type: ignore[arg-type]
                started = time.perf_counter()
                outs = llm.generate(prompts, params)
                tokens = sum(len(o.token_ids) for o in outs)
                per_token[name].append((time.perf_counter() - started) / tokens)
        base = statistics.median(per_token["none"])
        for name, values in per_token.items():
            median = statistics.median(values)
            print(f"grammar {name:11s} {mode:7s} {median * 1000:6.3f} ms/token  {median / base:5.2f}x none")


def router_costs(llm: LLM) -> None:
    params = SamplingParams(max_tokens=OUTPUT_LEN, temperature=0.0, ignore_eos=True, top_logprobs=20)
    out = llm.generate([list(range(3, 3 + PROMPT_LEN))], params)[0]
    assert out.logprobs is not None and out.top_logprobs is not None
    tokenizer, calls = llm.tokenizer, 50
    for k in (0, 5, 20):
        top = [dict(list(t.items())[:k]) for t in out.top_logprobs] if k else None
        started = time.perf_counter()
        for _ in range(calls):
            completion_logprobs(tokenizer, out.token_ids, out.logprobs, 0, top, TokenTexts(tokenizer))
        completions = (time.perf_counter() - started) / calls / len(out.token_ids)
        started = time.perf_counter()
        for _ in range(calls):
            chat_logprobs(tokenizer, out.token_ids, out.logprobs, top, TokenTexts(tokenizer))
        chat = (time.perf_counter() - started) / calls / len(out.token_ids)
        print(f"router k={k:2d}: completions {completions * 1000:.3f} ms/token, chat {chat * 1000:.3f} ms/token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: the built-in tiny model)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each engine case (default 5)")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    llm = LLM(args.model)
    engine_costs(llm, args.reps, random.Random(0))
    prompt_scoring_costs(llm, args.reps, random.Random(1))
    grammar_costs(llm, args.reps, random.Random(2))
    router_costs(llm)


if __name__ == "__main__":
    main()
