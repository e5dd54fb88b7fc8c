"""A storm of requests whose clients mostly go away early, against a running pdserve endpoint;
then checks that the cluster let go of everything.

    python ops/disconnect_storm.py --url http://127.0.0.1:8000 [--requests 200] [--seed 1]

Every request is sent at once: completions and chat, streamed or not, n of 1 to 3, greedy or
sampled, some with logprobs or stop strings, some too long for the context (400). Each client
then reads its whole answer, or stops after 0, 1, 3 or 10 events, or abandons the request a few
milliseconds after sending it. After a settle time it reads `/cluster` and `/metrics`.

Prints the outcome counts, the worker view and the seconds the storm took, as JSON. Exit status
1 when any answer was a 5xx, a stream ended with an error or without [DONE], a client failed
for any other reason than the deliberate early exits, or any worker still runs a request or
holds a KV block once the cluster has settled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from typing import Any

import httpx

EARLY_EXITS = (None, None, -1, 0, 1, 3, 10)  # None: read it all; -1: abandon before the answer


def request_body(rng: random.Random) -> tuple[str, dict[str, Any]]:
    chat = rng.random() < 0.3
    body: dict[str, Any] = {
        "max_tokens": rng.randint(1, 150),
        "stream": rng.random() < 0.8,
        "ignore_eos": True,
        "temperature": rng.choice([0, 0.8]),
        "n": rng.choice([1, 1, 2, 3]),
        "seed": rng.randint(0, 9),
    }
    if rng.random() < 0.1:
        body |= {"logprobs": True, "top_logprobs": 2} if chat else {"logprobs": 2}
    if rng.random() < 0.1:
        body["stop"] = ["a", "e"]
    if rng.random() < 0.05:
        body["max_tokens"] = 1 << 20  # over any context: a 400
    if chat:
        body["messages"] = [{"role": "user", "content": "y" * rng.randint(1, 400)}]
        return "/v1/chat/completions", body
    body["prompt"] = "x" * rng.randint(1, 1500)
    return "/v1/completions", body


async def one(client: httpx.AsyncClient, url: str, rng: random.Random) -> str:
    path, body = request_body(rng)
    leave_after = rng.choice(EARLY_EXITS)
    try:
        if leave_after == -1:
            try:
                await asyncio.wait_for(client.post(url + path, json=body), rng.uniform(0.001, 0.05))
            except TimeoutError:
                return "abandoned"
            return "answered before abandoning"
        if not body["stream"]:
            answer = await client.post(url + path, json=body)
            return f"http {answer.status_code}"
        events = 0
        async with client.stream("POST", url + path, json=body) as answer:
            if answer.status_code != 200:
                await answer.aread()
                return f"http {answer.status_code}"
            async for line in answer.aiter_lines():
                if not line.startswith("data:"):
                    continue
                events += 1
                if "[DONE]" in line:
                    return "streamed to [DONE]"
                if '"error"' in line:
                    return "stream error"
                if leave_after is not None and events > leave_after:
                    return "left early"
        return "stream ended without [DONE]"
    except Exception as exc:
        return f"client error {type(exc).__name__}"


GOOD = {"abandoned", "answered before abandoning", "http 200", "http 400", "streamed to [DONE]", "left early"}


async def storm(url: str, requests: int, seed: int, settle_s: float) -> dict[str, Any]:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=requests + 10)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        started = time.monotonic()
        outcomes = Counter(await asyncio.gather(*(one(client, url, rng) for _ in range(requests))))
        seconds = time.monotonic() - started
        print(f"storm over in {seconds:.1f} s; waiting {settle_s} s for the cluster to settle", file=sys.stderr)
        await asyncio.sleep(settle_s)
        workers = (await client.get(f"{url}/cluster")).json()["workers"]
    busy = [w["id"] for w in workers if w["running"] or w["waiting"] or w["kv_blocks_used"]]
    bad = {outcome: count for outcome, count in outcomes.items() if outcome not in GOOD}
    return {
        "requests": requests,
        "seconds": round(seconds, 2),
        "outcomes": dict(outcomes),
        "unexpected": bad,
        "workers": [{k: w[k] for k in ("id", "running", "waiting", "kv_blocks_used")} for w in workers],
        "busy_after_settle": busy,
        "ok": not bad and not busy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server root, without /v1")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle-s", type=float, default=4.0, help="wait this long before reading /cluster")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    result = asyncio.run(storm(args.url.rstrip("/"), args.requests, args.seed, args.settle_s))
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
