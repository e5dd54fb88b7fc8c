"""Continuous batching: which sequences run this step and how many tokens each computes.

One rule covers prefill, chunked prefill, decode and recompute: a scheduled sequence
computes its next `min(uncomputed tokens, remaining budget)` tokens. Running sequences go
first (in arrival order), so decodes are never starved by new prompts; waiting ones are
admitted with what budget and blocks remain. When blocks run out, the most recently admitted
running sequence is preempted: its blocks are freed and it is recomputed later.

With the "priority" policy (vLLM's) the same rules hold in (priority, arrival) order instead of
arrival order: running sequences get the step's budget most urgent first, the waiting queue is
kept in that order (a preempted sequence goes back to its place in it), and the victim of a
preemption is the least urgent running sequence. As in vLLM, a waiting request never preempts a
running one: urgency decides who is served first and who gives way, not who is interrupted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pdserve.engine.block_manager import BlockManager
from pdserve.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledBatch:
    """The work of one step: each entry is (sequence, tokens to compute this step)."""

    entries: list[tuple[Sequence, int]] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)


def urgency(seq: Sequence) -> tuple[int, int]:
    """The "priority" policy's order: lower priority values first, then arrival."""
    return seq.params.priority, seq.arrival


class Scheduler:
    def __init__(
        self, block_manager: BlockManager, max_num_batched_tokens: int, max_num_seqs: int, policy: str = "fcfs"
    ) -> None:
        assert max_num_batched_tokens > 0 and max_num_seqs > 0
        assert policy in ("fcfs", "priority"), policy
        self.by_priority = policy == "priority"
        self.block_manager = block_manager
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        if self.by_priority:
            self._queue_in_order(seq)
        else:
            self.waiting.append(seq)

    def _queue_in_order(self, seq: Sequence) -> None:
        """Insert into the waiting queue by urgency (searched from the back: new work is usually
        the least urgent, and the queue's order is already right)."""
        key = urgency(seq)
        index = len(self.waiting)
        while index > 0 and urgency(self.waiting[index - 1]) > key:
            index -= 1
        self.waiting.insert(index, seq)

    def add_running(self, seq: Sequence) -> None:
        """Join a sequence whose blocks are already filled (KV import) to the running batch."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        scheduled: set[int] = set()
        if self.by_priority:
            # Most urgent first, so the last one is the victim when blocks run out.
            self.running.sort(key=urgency)

        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            assert num_new > 0, f"{seq.request_id} is running with nothing to compute"
            while not self.block_manager.ensure_slots(seq, seq.num_computed_tokens + num_new):
                victim = self.running[-1]
                assert id(victim) not in scheduled, "preempting a scheduled sequence"
                self._preempt(victim)
                batch.num_preempted += 1
                if victim is seq:
                    break
            else:
                batch.entries.append((seq, num_new))
                scheduled.add(id(seq))
                budget -= num_new
                index += 1

        # Admitting new work while preempting would only thrash the cache.
        while self.waiting and budget > 0 and not batch.num_preempted and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_table and not seq.wants_prompt_logprobs:
                # A prompt to be scored runs through the model whole: cached tokens get no logits.
                self.block_manager.match_prefix(seq)
                if seq.num_preemptions == 0:
                    seq.num_cached_tokens = seq.num_computed_tokens
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self.block_manager.ensure_slots(seq, seq.num_computed_tokens + num_new):
                had_hits = bool(seq.block_table)
                self.block_manager.release(seq)
                if had_hits and not self.running:
                    # Cache hits pinned the blocks the rest of the prompt needs: start afresh.
                    self.block_manager.reset_prefix_cache()
                    continue
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.entries.append((seq, num_new))
            budget -= num_new
        return batch

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.release(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        if self.by_priority:
            self._queue_in_order(seq)
        else:
            self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Take a sequence out of the batch; its blocks are released by the caller's policy."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
