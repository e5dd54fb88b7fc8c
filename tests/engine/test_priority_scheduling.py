"""Priority scheduling (vLLM's --scheduling-policy priority): lower priority values are served
first, ties by arrival; the least urgent running sequence is the one preempted; and an engine
scheduling first come, first served refuses any priority but 0. Real engine, built-in model."""

from __future__ import annotations

import pytest
from pdserve import LLM, SamplingParams
from pdserve.engine.config import EngineConfig
from pdserve.engine.llm_engine import LLMEngine
from pdserve.errors import InvalidRequestError

PROMPT = [5, 6, 7, 8, 9, 10, 11, 12]


def engine(policy: str, **options: int) -> LLMEngine:
    return LLMEngine.from_model(None, dtype="float32", config=EngineConfig(scheduling_policy=policy, **options))


def run(e: LLMEngine) -> list[str]:
    """Step until idle; request ids in the order they finished."""
    finished = []
    while e.has_unfinished():
        finished += [out.request_id for out in e.step() if out.finished]
    return finished


def params(priority: int = 0, max_tokens: int = 3) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, priority=priority)


def test_waiting_requests_are_served_most_urgent_first() -> None:
    e = engine("priority", max_num_seqs=1)
    for rid, priority in (("a", 0), ("b", 5), ("c", -1), ("d", 5), ("e", 0)):
        e.add_request(rid, PROMPT, params(priority))
    assert run(e) == ["c", "a", "e", "b", "d"]  # by priority, ties in arrival order


def test_first_come_first_served_keeps_arrival_order_and_refuses_priorities() -> None:
    e = engine("fcfs", max_num_seqs=1)
    for rid in "abc":
        e.add_request(rid, PROMPT, params())
    assert run(e) == ["a", "b", "c"]
    with pytest.raises(InvalidRequestError, match="--scheduling-policy priority"):
        e.add_request("x", PROMPT, params(priority=1))
    with pytest.raises(InvalidRequestError, match="scheduling_policy must be one of fcfs, priority"):
        EngineConfig(scheduling_policy="lifo")
    with pytest.raises(InvalidRequestError, match=r"priority must be an integer in \[-2\^31, 2\^31\)"):
        SamplingParams(priority=1 << 31)
    with pytest.raises(InvalidRequestError, match="priority must be an integer"):
        SamplingParams(priority=True)  # type: ignore[arg-type]


def preempted(policy: str, priorities: tuple[int, int]) -> tuple[set[str], dict[str, list[int]]]:
    """Two requests that cannot both grow in a 4-block pool: which were preempted, and their tokens."""
    e = engine(policy, num_kv_blocks=4, block_size=16)
    for rid, priority in zip(("early", "late"), priorities, strict=True):
        e.add_request(rid, PROMPT, params(priority, max_tokens=40))  # 48 tokens: 3 blocks each
    victims: set[str] = set()
    tokens: dict[str, list[int]] = {}
    while e.has_unfinished():
        victims |= {rid for rid, seq in e.requests.items() if seq.num_preemptions}
        for out in e.step():
            if out.finished:
                tokens[out.request_id] = list(out.token_ids)
    return victims, tokens


def test_the_least_urgent_running_sequence_gives_way() -> None:
    alone = engine("fcfs")
    alone.add_request("solo", PROMPT, params(max_tokens=40))
    while alone.has_unfinished():
        outs = [out for out in alone.step() if out.finished]
        expected = list(outs[0].token_ids) if outs else None
    assert expected is not None and len(expected) == 40
    victims, tokens = preempted("fcfs", (0, 0))
    assert victims == {"late"}  # first come, first served: the latest admitted gives way
    victims_by_priority, tokens_by_priority = preempted("priority", (0, -1))
    assert victims_by_priority == {"early"}  # the later but more urgent request keeps its blocks
    for outputs in (tokens, tokens_by_priority):  # recomputing after a preemption changes nothing
        assert outputs == {"early": expected, "late": expected}


def test_offline_priorities() -> None:
    llm = LLM(scheduling_policy="priority", max_num_seqs=1, dtype="float32")
    prompts = ["one", "two", "three"]
    sp = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    plain = llm.generate(prompts, sp)
    ranked = llm.generate(prompts, sp, priority=[3, -2, 0])
    assert [o.token_ids for o in ranked] == [o.token_ids for o in plain]  # outputs stay in prompt order
    with pytest.raises(InvalidRequestError, match="3 prompts but 2 priorities"):
        llm.generate(prompts, sp, priority=[1, 2])
    with pytest.raises(InvalidRequestError, match="--scheduling-policy priority"):
        LLM(dtype="float32", num_kv_blocks=64).generate("x", sp, priority=[1])
