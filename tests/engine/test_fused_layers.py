"""The fused CPU decoder layers (engine/fused_layers.py) against Hugging Face's own layers, step by step,
for each model family they take over: same attention metadata and cache, hidden states compared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pdserve.engine import packed_linear
from pdserve.engine.attention import ATTN_IMPLEMENTATION, AttentionMetadata, attention_metadata
from pdserve.engine.fused_layers import fuse_decoder_layers
from pdserve.kernels import native_build
from pdserve.models import LoadedModel, load_model

pytestmark = pytest.mark.skipif(native_build.find_compiler() is None, reason="no C compiler for the native kernels")

BLOCK_SIZE = 16
# bf16: the packed q/k/v matmul may round differently from three separate ones, and that
# difference grows through the layers; float32 differs by summation order only.
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (6e-2, 5e-2)}


def metadata(loaded: LoadedModel, prompt_len: int, num_blocks: int) -> AttentionMetadata:
    """A prefill step over a whole prompt of one sequence stored in blocks 0, 1, ..."""
    shape = (num_blocks, BLOCK_SIZE, loaded.num_kv_heads, loaded.head_dim)
    table = torch.arange(num_blocks, dtype=torch.int32)[None]
    empty = torch.zeros(0, num_blocks, dtype=torch.int32)
    return AttentionMetadata(
        slot_mapping=torch.arange(prompt_len),
        num_decode_tokens=0,
        decode_block_tables=empty,
        decode_context_lens=torch.zeros(0, dtype=torch.int32),
        prefill_block_tables=table,
        prefill_cu_seqlens_q=torch.tensor([0, prompt_len], dtype=torch.int32),
        prefill_context_lens=torch.tensor([prompt_len], dtype=torch.int32),
        k_caches=[torch.zeros(shape, dtype=loaded.dtype) for _ in range(loaded.num_layers)],
        v_caches=[torch.zeros(shape, dtype=loaded.dtype) for _ in range(loaded.num_layers)],
    )


def decode_metadata(prefill: AttentionMetadata, position: int) -> AttentionMetadata:
    """The next step after `prefill`: one decode token at `position`, same caches."""
    return AttentionMetadata(
        slot_mapping=torch.tensor([position]),
        num_decode_tokens=1,
        decode_block_tables=prefill.prefill_block_tables,
        decode_context_lens=torch.tensor([position + 1], dtype=torch.int32),
        prefill_block_tables=prefill.decode_block_tables,
        prefill_cu_seqlens_q=torch.zeros(1, dtype=torch.int32),
        prefill_context_lens=torch.zeros(0, dtype=torch.int32),
        k_caches=prefill.k_caches,
        v_caches=prefill.v_caches,
    )


@torch.inference_mode()
def run_steps(loaded: LoadedModel, prompt: list[int]) -> list[torch.Tensor]:
    """Final hidden states of a prefill step over `prompt` and of one decode step after it."""
    decoder = loaded.model.get_decoder()
    prefill = metadata(loaded, len(prompt), num_blocks=-(-(len(prompt) + 1) // BLOCK_SIZE))
    outputs = []
    steps = [(prefill, prompt, range(len(prompt))), (decode_metadata(prefill, len(prompt)), [7], [len(prompt)])]
    for meta, ids, positions in steps:
        with attention_metadata(meta):
            hidden = decoder(
                input_ids=torch.tensor([ids]), position_ids=torch.tensor([list(positions)]), use_cache=False
            ).last_hidden_state
        outputs.append(hidden.float())
    return outputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_fused_layers_match_hf(model_dirs: dict[str, Path], arch: str, dtype: torch.dtype) -> None:
    fused, plain = (load_model(model_dirs[arch], dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION) for _ in "ab")
    assert fuse_decoder_layers(fused.model)
    prompt = [(i * 37) % fused.vocab_size for i in range(45)]
    atol, rtol = TOLERANCES[dtype]
    for ours, theirs in zip(run_steps(fused, prompt), run_steps(plain, prompt), strict=True):
        torch.testing.assert_close(ours, theirs, atol=atol * theirs.abs().max().item(), rtol=rtol)


def test_packed_projections_keep_the_weights(model_dirs: dict[str, Path]) -> None:
    loaded = load_model(model_dirs["qwen2"], dtype=torch.float32, attn_implementation=ATTN_IMPLEMENTATION)
    state = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    assert fuse_decoder_layers(loaded.model)
    after = loaded.model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[name], tensor) for name, tensor in state.items())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_weights_give_bit_identical_states_and_free_the_copies(
    model_dirs: dict[str, Path], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not packed_linear.available(torch.bfloat16):
        pytest.skip("no oneDNN weight packing for bf16 in this torch build")
    packed, unpacked = (
        load_model(model_dirs[arch], dtype=torch.bfloat16, attn_implementation=ATTN_IMPLEMENTATION) for _ in "ab"
    )
    weight_bytes = sum(p.numel() for p in unpacked.model.parameters())
    assert fuse_decoder_layers(packed.model)
    with monkeypatch.context() as patch:
        patch.setattr(packed_linear, "available", lambda dtype: False)
        assert fuse_decoder_layers(unpacked.model)
    prompt = [(i * 37) % packed.vocab_size for i in range(45)]
    for ours, theirs in zip(run_steps(packed, prompt), run_steps(unpacked, prompt), strict=True):
        assert torch.equal(ours, theirs)
    # The projections' own copies were released: only embeddings, norms and lm_head remain.
    layers = packed.model.get_decoder().layers
    assert all(
        layer.self_attn.q_proj.weight.numel() == 0 and layer.mlp.down_proj.weight.numel() == 0 for layer in layers
    )
    assert sum(p.numel() for p in packed.model.parameters()) < weight_bytes


def test_no_packing_in_float32_or_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not packed_linear.available(torch.float32)
    monkeypatch.setenv(packed_linear.ENV_VAR, "0")
    packed_linear.available.cache_clear()
    try:
        assert not packed_linear.available(torch.bfloat16)
    finally:
        monkeypatch.delenv(packed_linear.ENV_VAR)
        packed_linear.available.cache_clear()
