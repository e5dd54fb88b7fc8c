"""Structured output for reasoning models: free thinking in <think>, then the grammar."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from engine_handoff import handed_off
from pdserve import LLM, SamplingParams
from pdserve.engine.grammar_constraint import GrammarConstraint
from pdserve.engine.json_grammar import JsonState
from pdserve.engine.thinking_grammar import Opening, Thinking, thinking_first
from pdserve.engine.token_texts import TokenTexts
from pdserve.errors import InvalidRequestError
from pdserve.models import create_random_model
from transformers import AutoTokenizer


def fed(state: object, text: str) -> object:
    """Feed `text` one cut at a time, at random cuts: a state must not depend on how text is split."""
    rng = random.Random(text)
    i = 0
    while state is not None and i < len(text):
        j = min(len(text), i + rng.randint(1, 4))
        state = state.feed(text[i:j])  # type: ignore[attr-defined]
        i = j
    return state


@pytest.mark.parametrize(
    ("parser", "text", "kind"),
    [
        ("deepseek_r1", 'Some thought, even {not json}.</think>{"a": 1}', JsonState),
        ("deepseek_r1", "<think>x</think>{", JsonState),
        ("deepseek_r1", "thinking, not done: </thin", Thinking),
        ("qwen3", '<think>plan</think>{"a": [1]}', JsonState),
        ("qwen3", '{"a": 2}', JsonState),  # no thinking: the grammar from the first character
        ("qwen3", "\n<thi", Opening),
        ("qwen3", "<think>still", Thinking),
    ],
)
def test_states_follow_the_text(parser: str, text: str, kind: type) -> None:
    assert isinstance(thinking_first(JsonState(), parser).feed(text), kind)
    assert isinstance(fed(thinking_first(JsonState(), parser), text), kind)


@pytest.mark.parametrize(
    ("parser", "text"),
    [
        ("deepseek_r1", "done</think>not json"),
        ("qwen3", "not json and no think"),
        ("qwen3", "<thunk>"),
        ("qwen3", "<think>x</think>]"),
    ],
)
def test_the_grammar_holds_after_thinking(parser: str, text: str) -> None:
    assert fed(thinking_first(JsonState(), parser), text) is None
    assert thinking_first(JsonState(), parser).feed(text) is None


def test_no_end_while_thinking() -> None:
    thinking = thinking_first(JsonState(), "deepseek_r1").feed("a thought")
    assert thinking is not None and not thinking.can_end and not thinking.complete
    done = thinking_first(JsonState(), "qwen3").feed('<think>a</think>{"a": 1}')
    assert done is not None and done.complete  # the grammar's own state: the object closed


def test_masks_of_thinking_states_are_what_the_state_takes(model_dirs: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["llama"])
    texts, vocab = TokenTexts(tokenizer), len(tokenizer)
    for state in (
        thinking_first(JsonState(), "deepseek_r1"),
        thinking_first(JsonState(), "deepseek_r1").feed("hmm </thin"),
        thinking_first(JsonState(), "qwen3"),
        thinking_first(JsonState(), "qwen3").feed(" <th"),
    ):
        assert state is not None
        constraint = GrammarConstraint(state, texts, frozenset(), vocab)  # type: ignore[arg-type]
        assert constraint.allowed_mask().nonzero().flatten().tolist() == [t for t in range(vocab) if constraint(t)]


def test_bad_parser_names_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="reasoning_parser"):
        SamplingParams(json_object=True, reasoning_parser="o1")


# -- with a model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """A random Llama whose tokenizer has <think> and </think> as tokens of their own."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 264,
        "max_position_embeddings": 512,
    }
    path = create_random_model(tmp_path_factory.mktemp("thinker"), config, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.save_pretrained(path)
    start, end = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    return path, start, end


def test_a_model_thinks_then_answers_in_json(thinker: tuple[Path, int, int]) -> None:
    """</think> pushed hard by a logit bias: the model closes its (empty) thinking at once, and
    the JSON grammar holds from there, even against the bias; without the parser the grammar
    holds from the first token and </think> is never written."""
    path, _, end = thinker
    llm = LLM(path, num_kv_blocks=64)
    params = {"max_tokens": 120, "temperature": 0.0, "json_object": True, "logit_bias": {end: 100.0}}
    out = llm.generate(["Give me JSON"], SamplingParams(**params, reasoning_parser="deepseek_r1"))[0]
    assert out.token_ids[0] == end and end not in out.token_ids[1:]
    assert out.text.startswith("</think>")
    answer = out.text.removeprefix("</think>")
    if out.finish_reason == "stop":
        assert isinstance(json.loads(answer), dict)
    else:
        assert JsonState().feed(answer) is not None
    plain = llm.generate(["Give me JSON"], SamplingParams(**params))[0]
    assert end not in plain.token_ids and JsonState().feed(plain.text) is not None


@pytest.mark.parametrize("parser", ["qwen3", "deepseek_r1"])
def test_thinking_survives_a_hand_off(thinker: tuple[Path, int, int], parser: str) -> None:
    """The decode engine rebuilds the state from the output so far, thinking included: the same
    tokens as one engine alone (seed 4: qwen3 is still thinking at the end, deepseek_r1 thinks,
    closes the block and answers "\t { }")."""
    path, start, end = thinker
    bias = {start: 4.0, end: 3.0}
    params = SamplingParams(
        max_tokens=30, temperature=1.0, seed=4, json_object=True, reasoning_parser=parser, logit_bias=bias
    )
    alone = LLM(path, num_kv_blocks=64).generate(["Think, then JSON"], params)[0]
    prefill, decode = LLM(path, num_kv_blocks=64).engine, LLM(path, num_kv_blocks=64).engine
    out = handed_off(prefill, decode, "Think, then JSON", params)
    assert out.token_ids == alone.token_ids and out.text == alone.text
    assert (end in alone.token_ids) == (parser == "deepseek_r1")
