"""Guided choice (SamplingParams.guided_choice, vLLM's `choice`): the output is one of the texts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pdserve import LLM, SamplingParams
from pdserve.engine.choice_grammar import ChoiceState
from pdserve.errors import InvalidRequestError
from pdserve.protocol.messages import params_from_wire, params_to_wire

CHOICES = ["positive", "negative", "neutral", "pos"]


def test_state_follows_the_choices() -> None:
    state = ChoiceState(tuple(CHOICES))
    assert state.feed("x") is None and state.feed("") is not None
    after = state.feed("pos")
    assert after is not None and after.can_end and not after.complete  # "pos", or on to "positive"
    whole = state.feed("neutral")
    assert whole is not None and whole.complete
    assert state.feed("neutral ") is None and state.feed("positives") is None
    assert state.feed("nega") is not None and not state.feed("nega").can_end  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def llm(model_dirs: dict[str, Path]) -> LLM:
    return LLM(model_dirs["llama"])


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 3}, {"top_k": 5, "seed": 1}])
def test_outputs_are_one_of_the_choices(llm: LLM, sampling: dict) -> None:
    prompts = ["Sentiment:", [5, 6, 7], "hello", "a b c"]
    for choices in (CHOICES, ["yes", "no"], [" A", " B", " C D"]):
        outs = llm.generate(prompts, SamplingParams(max_tokens=32, guided_choice=choices, **sampling))
        for out in outs:
            assert out.finish_reason == "stop" and out.text in choices, (choices, out.text)


def test_a_prefix_choice_ends_on_eos(llm: LLM) -> None:
    """ "pos" is whole but "positive" goes on: eos may end it there, and does when it is likely."""
    eos = llm.tokenizer.eos_token_id
    params = SamplingParams(max_tokens=32, guided_choice=["pos", "positive"], temperature=0.0, logit_bias={eos: 30.0})
    out = llm.generate(["x"], params)[0]
    assert out.text == "pos" and out.finish_reason == "stop" and out.token_ids[-1] == eos


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"guided_choice": []}, "guided_choice must be"),
        ({"guided_choice": ["a", ""]}, "guided_choice must be"),
        ({"guided_choice": "ab"}, "guided_choice must be"),
        ({"guided_choice": ["x" * 40_000]}, "guided_choice must be"),
        ({"guided_choice": ["a"], "json_object": True}, "exclude each other"),
        ({"guided_choice": ["a"], "json_schema": {}}, "exclude each other"),
    ],
)
def test_bad_choices_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        SamplingParams(**fields)


def test_choices_travel_on_the_wire() -> None:
    params = SamplingParams(guided_choice=CHOICES)
    assert params_from_wire(params_to_wire(params)).guided_choice == CHOICES
