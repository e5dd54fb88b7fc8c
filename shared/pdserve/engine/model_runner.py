"""Runs one packed batch through the model and returns logits for the sequences that sample.

The runner owns the KV cache tensors and nothing else: the scheduler decided what runs and
the block manager decided where its K/V live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from pdserve.engine import packed_linear
from pdserve.engine.attention import AttentionMetadata, attention_metadata
from pdserve.engine.fused_layers import fuse_decoder_layers
from pdserve.engine.scheduler import ScheduledBatch
from pdserve.engine.sequence import Sequence
from pdserve.kernels import BACKEND_ENV
from pdserve.models import LoadedModel


@dataclass(slots=True)
class PromptHidden:
    """Final hidden states of prompt positions to be scored: row j is position `first + j`, whose
    logits predict prompt token `first + j + 1`. lm_head runs on them in slices, later."""

    seq: Sequence
    first: int
    hidden: torch.Tensor  # [n, hidden_size]


@dataclass(slots=True)
class StepResult:
    sampling: list[Sequence]  # the sequences that reached their last token and sample next
    logits: torch.Tensor  # [len(sampling), vocab] in the model's dtype
    prompt_hidden: list[PromptHidden] = field(default_factory=list)


class ScaledHead(torch.nn.Module):
    """lm_head, then a constant factor on the logits."""

    def __init__(self, head: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.head = head
        self.factor = factor

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden) * self.factor


class ModelRunner:
    def __init__(self, loaded: LoadedModel, num_blocks: int, block_size: int) -> None:
        self.model = loaded.model
        self.device = next(self.model.parameters()).device
        self.block_size = block_size
        self.decoder = self.model.get_decoder()
        # PDSERVE_KERNELS=torch keeps every op in torch, Hugging Face's layers included.
        self.fused_layers = os.environ.get(BACKEND_ENV) != "torch" and fuse_decoder_layers(self.model)
        self.lm_head = self.model.get_output_embeddings()
        if self.fused_layers and isinstance(self.lm_head, torch.nn.Linear) and packed_linear.available(loaded.dtype):
            # lm_head is the largest single product of a decode step; a weight tied to the
            # embeddings is still read by them, so it is packed as a copy.
            tied = self.lm_head.weight.data_ptr() == self.decoder.embed_tokens.weight.data_ptr()
            self.lm_head = packed_linear.pack_module(self.lm_head, shared=tied)
        scaling = float(getattr(loaded.config, "logits_scaling", 1.0) or 1.0)
        if scaling != 1.0:
            # Granite divides its logits in its CausalLM forward, which the runner does not call.
            self.lm_head = ScaledHead(self.lm_head, 1.0 / scaling)
        shape = (num_blocks, block_size, loaded.num_kv_heads, loaded.head_dim)
        self.k_caches = [torch.zeros(shape, dtype=loaded.dtype, device=self.device) for _ in range(loaded.num_layers)]
        self.v_caches = [torch.zeros(shape, dtype=loaded.dtype, device=self.device) for _ in range(loaded.num_layers)]

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepResult:
        """Compute the batch; return the sequences that reached their last token (and so
        sample next) with their logits, and the hidden states of prompt positions to score."""
        # Decodes (one token) first: they share one batched attention call.
        entries = sorted(batch.entries, key=lambda e: e[1] != 1)
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logit_rows: list[int] = []
        sampling: list[Sequence] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        prefill_tables: list[list[int]] = []
        prefill_lens: list[int] = []
        cu_seqlens = [0]
        scored: list[tuple[Sequence, int, int, int]] = []  # (seq, first position, its row, positions)
        bs = self.block_size
        for seq, num_new in entries:
            start = seq.num_computed_tokens
            end = start + num_new
            if seq.wants_prompt_logprobs:
                # Positions up to the one before the last prompt token; a recompute after a
                # preemption skips the ones already scored.
                first = max(start, len(seq.prompt_logprobs))
                last = min(end, seq.num_prompt_tokens - 1)
                if first < last:
                    scored.append((seq, first, len(input_ids) + first - start, last - first))
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            if num_new == 1:
                decode_tables.append(table)
                decode_lens.append(end)
            else:
                prefill_tables.append(table)
                prefill_lens.append(end)
                cu_seqlens.append(cu_seqlens[-1] + num_new)
            if end == seq.num_tokens:
                logit_rows.append(len(input_ids) - 1)
                sampling.append(seq)

        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            num_decode_tokens=len(decode_lens),
            decode_block_tables=_pad_tables(decode_tables, dev),
            decode_context_lens=torch.tensor(decode_lens, dtype=torch.int32, device=dev),
            prefill_block_tables=_pad_tables(prefill_tables, dev),
            prefill_cu_seqlens_q=torch.tensor(cu_seqlens, dtype=torch.int32, device=dev),
            prefill_context_lens=torch.tensor(prefill_lens, dtype=torch.int32, device=dev),
            k_caches=self.k_caches,
            v_caches=self.v_caches,
        )
        ids = torch.tensor(input_ids, dtype=torch.int64, device=dev).unsqueeze(0)
        pos = torch.tensor(positions, dtype=torch.int64, device=dev).unsqueeze(0)
        with attention_metadata(meta):
            hidden = self.decoder(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
        prompt_hidden = [PromptHidden(seq, first, hidden[0, row : row + n]) for seq, first, row, n in scored]
        if not sampling:
            return StepResult(sampling, torch.empty(0), prompt_hidden)
        rows = torch.tensor(logit_rows, dtype=torch.int64, device=dev)
        # Only the rows that sample go through lm_head: T x vocab logits would dominate prefill.
        logits = self.lm_head(hidden[0].index_select(0, rows))
        return StepResult(sampling, logits, prompt_hidden)


def _pad_tables(tables: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max((len(t) for t in tables), default=0)
    padded = [t + [0] * (width - len(t)) for t in tables]
    return torch.tensor(padded, dtype=torch.int32, device=device).reshape(len(tables), width)
