"""Paged KV cache bookkeeping: fixed-size blocks, reference counts and prefix caching.

A block holds `block_size` tokens of K/V for every layer. A full block is identified by a
chained hash: its parent's hash plus its own token ids, so equal prefixes map to equal
chains. Blocks whose reference count drops to zero keep their hash and stay findable until
they are reused (LRU order), which is what makes later requests with the same prefix cheap.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from pdserve.engine.sequence import Sequence

NO_HASH = -1


def chain_hash(parent: int, token_ids: list[int]) -> int:
    """Stable across processes (unlike hash()), so routers can compute it too."""
    h = hashlib.blake2b(digest_size=8)
    h.update(parent.to_bytes(8, "little", signed=True))
    h.update(array("q", token_ids).tobytes())
    return int.from_bytes(h.digest(), "little", signed=True) & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int = NO_HASH
    token_ids: tuple[int, ...] = field(default_factory=tuple)


class BlockManager:
    """Owns every KV block. The scheduler asks; sequences hold block ids in their block table."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        assert num_blocks > 0 and block_size > 0
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in eviction order (least recently freed first); cached ones stay findable.
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hash_to_block: dict[int, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return len(self.blocks) - len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache ---------------------------------------------------------------------

    def match_prefix(self, seq: Sequence) -> None:
        """Attach cached blocks for the longest cached prefix of a sequence that holds none.

        At least one token is always left to compute, because the step that computes it is
        the one that produces logits for the next token.
        """
        assert not seq.block_table and seq.num_computed_tokens == 0
        if not self.enable_prefix_caching:
            return
        parent = NO_HASH
        for index in range((seq.num_tokens - 1) // self.block_size):
            tokens = seq.block_token_ids(index, self.block_size)
            h = chain_hash(parent, tokens)
            block_id = self.hash_to_block.get(h)
            # Compare the stored tokens too: a hash collision must never corrupt output.
            if block_id is None or self.blocks[block_id].token_ids != tuple(tokens):
                break
            self._take(block_id)
            seq.block_table.append(block_id)
            seq.block_hashes.append(h)
            parent = h
        seq.num_computed_tokens = len(seq.block_table) * self.block_size

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks that became full and computed, so later requests can share them."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        while len(seq.block_hashes) < num_full:
            index = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if seq.block_hashes else NO_HASH
            tokens = seq.block_token_ids(index, self.block_size)
            h = chain_hash(parent, tokens)
            block = self.blocks[seq.block_table[index]]
            if block.hash == NO_HASH and h not in self.hash_to_block:
                block.hash = h
                block.token_ids = tuple(tokens)
                self.hash_to_block[h] = block.block_id
            seq.block_hashes.append(h)

    # -- allocation -------------------------------------------------------------------------

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self.free)

    def ensure_slots(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow a block table to cover `num_tokens` tokens; all or nothing."""
        missing = self.blocks_needed(num_tokens) - len(seq.block_table)
        if missing <= 0:
            return True
        if missing > len(self.free):
            return False
        for _ in range(missing):
            block_id, _ = self.free.popitem(last=False)
            self._evict(block_id)
            self.blocks[block_id].ref_count = 1
            seq.block_table.append(block_id)
        return True

    def release(self, seq: Sequence) -> None:
        """Drop a sequence's references. Tail blocks go to the free list first so that the
        shared head of a prefix survives longest in the cache."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            assert block.ref_count > 0, f"block {block_id} released more often than taken"
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_computed_tokens = 0

    def reset_prefix_cache(self) -> None:
        for block_id in list(self.hash_to_block.values()):
            self._evict(block_id)

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def _evict(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.hash != NO_HASH:
            if self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            block.hash = NO_HASH
            block.token_ids = ()

    # -- invariants -------------------------------------------------------------------------

    def check_integrity(self, live: Iterable[Sequence] = ()) -> None:
        """Assert the ownership invariants; `live` are all sequences that may hold blocks."""
        expected = [0] * len(self.blocks)
        for seq in live:
            assert len(set(seq.block_table)) == len(seq.block_table), f"{seq.request_id}: duplicate block"
            for block_id in seq.block_table:
                expected[block_id] += 1
        for block in self.blocks:
            assert block.ref_count == expected[block.block_id], (
                f"block {block.block_id}: ref_count {block.ref_count}, held by {expected[block.block_id]}"
            )
            assert (block.ref_count == 0) == (block.block_id in self.free), f"block {block.block_id} free list"
        for h, block_id in self.hash_to_block.items():
            block = self.blocks[block_id]
            assert block.hash == h and len(block.token_ids) == self.block_size, f"hash map -> {block_id}"
