"""JSON mode (SamplingParams.json_object): the grammar, and outputs that are JSON objects."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from engine_handoff import handed_off
from pdserve import LLM, SamplingParams
from pdserve.engine.grammar_constraint import GrammarConstraint
from pdserve.engine.json_grammar import MAX_BLANK_RUN, JsonState
from pdserve.engine.json_schema import compiled_schema, schema_text
from pdserve.engine.sampler import best_allowed
from pdserve.engine.schema_grammar import SchemaState
from pdserve.engine.token_texts import TokenTexts
from transformers import AutoTokenizer

DOCUMENTS = [
    "{}",
    '{"a": 1}',
    '{"a": [1, 2.5e-3, -0, true, null, {"b": "x\\u00e9\\n"}], "c": false}',
    ' { "k" : [ ] } ',
    '{"a":{"b":{"c":[[],[{}]]}}}',
    '{"é": "ü 🙂"}',
]
NOT_OBJECTS = [
    "[]",
    '{"a" 1}',
    '{"a": 01}',
    '{"a": 1,}',
    "{a: 1}",
    '{"a": tru}',
    '{"a": "x\n"}',
    '{"a": 1}}',
    '{"a": -}',
]


def random_value(rng: random.Random, depth: int = 0) -> object:
    r = rng.random()
    if depth > 3 or r < 0.3:
        return rng.choice([1, -2.5, 0, 3e10, 'q"\\x', True, None, "é", 1e-7, ""])
    if r < 0.6:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}\t": random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


def test_grammar_accepts_objects_and_every_prefix() -> None:
    rng = random.Random(0)
    texts = list(DOCUMENTS)
    for _ in range(300):
        obj = {f"k{i}": random_value(rng) for i in range(rng.randint(0, 4))}
        texts += [json.dumps(obj), json.dumps(obj, indent=1), json.dumps(obj, ensure_ascii=False)]
    for text in texts:
        state: JsonState | None = JsonState()
        for char in text:  # every prefix is accepted on the way
            assert state is not None, text
            state = state.feed(char)
        assert state is not None and state.complete, text


def test_grammar_refuses_what_is_not_an_object() -> None:
    for text in NOT_OBJECTS:
        state = JsonState().feed(text)
        assert state is None or not state.complete, text
    assert JsonState().feed(" " * (MAX_BLANK_RUN + 1)) is None  # blanks are capped
    # Whatever the grammar calls complete, Python's parser reads as an object.
    rng = random.Random(1)
    alphabet = '{}[]":,0123456789.-eEtrufalsn \\ab'
    for _ in range(20000):
        text = "{" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        state = JsonState().feed(text)
        if state is not None and state.complete:
            assert isinstance(json.loads(text), dict), text


@pytest.fixture(scope="module")
def llm(model_dirs: dict[str, Path]) -> LLM:
    return LLM(model_dirs["llama"])


@pytest.mark.parametrize(
    "sampling", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 2}, {"temperature": 0.7, "top_p": 0.9, "seed": 5}]
)
def test_outputs_are_json_objects_or_their_start(llm: LLM, sampling: dict) -> None:
    prompts = ["Give me JSON", [5, 6, 7], "hello", "a b c d"]
    outs = llm.generate(prompts, SamplingParams(max_tokens=64, json_object=True, **sampling))
    for out in outs:
        state = JsonState().feed(out.text)
        assert state is not None, out.text  # never a token that breaks the JSON
        if out.finish_reason == "stop":
            assert state.complete and isinstance(json.loads(out.text), dict)  # ends when the object closes
        else:
            assert out.finish_reason == "length" and not state.complete


def test_a_model_that_closes_gets_a_whole_object(llm: LLM) -> None:
    close = llm.tokenizer.encode("}", add_special_tokens=False)[0]
    params = SamplingParams(max_tokens=64, json_object=True, temperature=0.0, logit_bias={close: 8.0})
    out = llm.generate(["x"], params)[0]
    assert out.finish_reason == "stop" and json.loads(out.text) == {}
    # Without JSON mode the same request does not write an object.
    plain = llm.generate(["x"], SamplingParams(max_tokens=64, temperature=0.0, logit_bias={close: 8.0}))[0]
    assert JsonState().feed(plain.text) is None


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "tags": {"type": "array", "items": {"type": "integer"}}},
    "required": ["name", "tags"],
}


@pytest.mark.parametrize(
    "grammar",
    [
        {"json_object": True},
        {"json_schema": PERSON},
        {"guided_choice": ["a long answer", "a longer answer", "no"]},
        {"guided_regex": r"[a-z]{3,12}( [a-z]{1,12}){2,6}\."},
    ],
)
def test_grammars_survive_a_hand_off(model_dirs: dict[str, Path], grammar: dict) -> None:
    """A decode engine continues the grammar (JSON mode, a schema, a choice, a regex) from the tokens the
    prefill engine produced: the same output as one engine alone."""
    params = SamplingParams(max_tokens=40, temperature=1.0, seed=2, **grammar)
    alone = LLM(model_dirs["llama"]).generate(["Give me JSON"], params)[0]
    prefill, decode = LLM(model_dirs["llama"]).engine, LLM(model_dirs["llama"]).engine
    out = handed_off(prefill, decode, "Give me JSON", params)
    assert out.token_ids == alone.token_ids and out.text == alone.text


def test_allowed_mask_and_best_allowed_agree_with_checking_every_token(model_dirs: dict[str, Path]) -> None:
    """GrammarConstraint.allowed_mask (found once per state, then cached) is exactly the tokens
    the grammar takes, and best_allowed through it picks what a check of every token picks."""
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["llama"])
    texts, vocab = TokenTexts(tokenizer), len(tokenizer) + 7  # ids past the tokenizer: padding rows
    schema = SchemaState.start(compiled_schema(schema_text(PERSON)))
    states = [JsonState(), JsonState().feed('{"a": '), schema.feed('{"name": "x'), schema.feed('{"tags": [')]
    generator = torch.Generator().manual_seed(0)
    for state in states:
        assert state is not None
        constraint = GrammarConstraint(state, texts, frozenset({tokenizer.eos_token_id}), vocab)
        allowed = [t for t in range(vocab) if constraint(t)]
        mask = constraint.allowed_mask()
        assert mask.shape == (vocab,) and mask.nonzero().flatten().tolist() == allowed
        hits = constraint.cache.hits
        assert constraint.allowed_mask().equal(mask) and constraint.cache.hits == hits + 1
        for _ in range(20):
            logits = torch.randn(vocab, generator=generator)
            logits[allowed] -= 10.0  # the likely tokens are refused: the scan goes past them
            expected = max(allowed, key=lambda t: float(logits[t]))
            assert best_allowed(logits, constraint) == expected
            assert best_allowed(logits, lambda t, c=constraint: c(t)) == expected
