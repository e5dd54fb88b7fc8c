"""Engine knobs, with the defaults a CPU laptop and a GPU server can both start from."""

from __future__ import annotations

from dataclasses import dataclass

from pdserve.errors import InvalidRequestError

GiB = 1 << 30


SCHEDULING_POLICIES = ("fcfs", "priority")


@dataclass(slots=True)
class EngineConfig:
    """Sizes in tokens, blocks and bytes.

    `num_kv_blocks` wins over `kv_cache_bytes` when both are given, and `gpu_memory_utilization`
    (a share of a CUDA device's memory, engine/gpu_memory.py) over both. `max_num_batched_tokens`
    is the per-step token budget: prompts longer than it are prefilled in chunks.
    `scheduling_policy` is vLLM's: "fcfs" (first come, first served) or "priority" (each
    request's SamplingParams.priority, lower first, then arrival; engine/scheduler.py).
    """

    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_bytes: int = 1 * GiB
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float | None = None
    scheduling_policy: str = "fcfs"

    def __post_init__(self) -> None:
        if self.scheduling_policy not in SCHEDULING_POLICIES:
            raise InvalidRequestError(
                f"scheduling_policy must be one of {', '.join(SCHEDULING_POLICIES)}, got {self.scheduling_policy!r}"
            )
        share = self.gpu_memory_utilization
        if share is not None and (
            isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share <= 1.0
        ):
            raise InvalidRequestError(f"gpu_memory_utilization must be in (0, 1] or None, got {share!r}")
        for name in ("block_size", "kv_cache_bytes", "max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidRequestError(f"{name} must be a positive integer, got {value!r}")
        for name in ("num_kv_blocks", "max_model_len"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise InvalidRequestError(f"{name} must be a positive integer or None, got {value!r}")

    def resolve_num_blocks(self, bytes_per_token: int) -> int:
        if self.num_kv_blocks is not None:
            return self.num_kv_blocks
        return max(1, self.kv_cache_bytes // (bytes_per_token * self.block_size))


def check_max_model_len(requested: int | None, model_len: int, pool_tokens: int) -> None:
    """An explicit max_model_len must fit the model and the KV pool: refused, as vLLM refuses
    it, rather than silently served shorter. Left out, the engine takes the smaller of the two."""
    if requested is None:
        return
    if requested > model_len:
        raise InvalidRequestError(
            f"max_model_len {requested} is more than this model's context of {model_len} tokens "
            f"(its config.json's max_position_embeddings, or its sliding window); use at most {model_len}"
        )
    if requested > pool_tokens:
        raise InvalidRequestError(
            f"max_model_len {requested} does not fit the KV pool of {pool_tokens} tokens: "
            f"raise --num-kv-blocks or lower --max-model-len"
        )
