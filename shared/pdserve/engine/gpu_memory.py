"""Sizing the KV pool to a share of the GPU's memory (vLLM's `--gpu-memory-utilization`).

On a GPU the pool should take what the weights and the forward pass leave, not a fixed size:
80 GB cards and 24 GB cards want pools two orders of magnitude apart. The pool gets
`utilization` x the card's memory, less what is in use once the weights are loaded (by this
process and any other) and less a reserve for one step's activations at the token budget.

The reserve is an estimate, not a profile run: per batched token, the hidden states and the MLP's
intermediate activations a layer holds at once, plus float32 logits for the rows that sample.
It errs large (3x), since running out of memory mid-step fails every request of the step while
a smaller pool only queues some.
"""

from __future__ import annotations

from pdserve.errors import InvalidRequestError

ACTIVATION_SAFETY = 3


def activation_reserve(
    max_num_batched_tokens: int, max_num_seqs: int, hidden_size: int, intermediate_size: int, vocab_size: int,
    dtype_bytes: int,
) -> int:  # fmt: skip
    """Bytes one forward pass at the token budget may hold beyond weights and KV (an estimate)."""
    per_token = (4 * hidden_size + 3 * intermediate_size) * dtype_bytes
    logits = min(max_num_seqs, max_num_batched_tokens) * vocab_size * 4
    return ACTIVATION_SAFETY * (max_num_batched_tokens * per_token + logits)


def kv_pool_bytes(utilization: float, total: int, free: int, reserve: int) -> int:
    """Bytes for the KV pool: `utilization` of `total`, less what is in use and the activation
    reserve; a clear error when that leaves nothing."""
    used = total - free
    budget = int(utilization * total) - used - reserve
    if budget <= 0:
        gib = 1 << 30
        raise InvalidRequestError(
            f"gpu_memory_utilization {utilization} leaves no room for the KV cache: {used / gib:.1f} GiB of "
            f"{total / gib:.1f} GiB is in use after loading the weights and a step needs about "
            f"{reserve / gib:.1f} GiB; raise --gpu-memory-utilization or lower --max-num-batched-tokens"
        )
    return budget
