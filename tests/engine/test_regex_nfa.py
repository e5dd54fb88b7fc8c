"""The regex automaton (`pattern` in schemas, guided regex) against Python's `re`."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from pdserve import LLM, SamplingParams
from pdserve.engine.regex_nfa import RegexState, compile_regex
from pdserve.errors import InvalidRequestError

PATTERNS = [
    r"abc", r"a|b|cd", r"(ab)*c", r"a+b?", r"[a-c]{2,3}", r"[^a]x", r"\d{3}-\d{4}", r"(a|bc){0,2}d", r"a{2}",
    r"a{2,}", r"x(?:yz)+", r"[a-]b", r"[]a]", r"\w+@\w+\.com", r"a.c", r"(a*)*b", r"[\d_]+", r"a{0}b", r"(a|b)*abb",
    r"\.\*", r"[A-Za-z0-9+/]{4}", r"a{1,1}", r"ab{0,2}", r"^a+$", r"^(b|c)", r"d$", r"\u0061+", r"[\s]x", r"x{2,3}?",
]  # fmt: skip
ALPHABET = "abcdxyz0123-_@.* /+]\t"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_matches_what_python_matches(pattern: str) -> None:
    """Whole matches (guided regex) and matches anywhere (JSON Schema's pattern), and every
    prefix of a match is still alive."""
    full, search, python = compile_regex(pattern), compile_regex(pattern, search=True), re.compile(pattern)
    rng = random.Random(pattern)
    for _ in range(2000):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 7)))
        states = full.feed(full.start, text)
        assert (bool(states) and full.accepts(states)) == bool(python.fullmatch(text)), text
        states = search.feed(search.start, text)
        assert (bool(states) and search.accepts(states)) == bool(python.search(text)), text
        if python.fullmatch(text):
            states = full.start
            for char in text:
                states = full.step(states, char)
                assert states, text


def test_shortest_rest_is_the_shortest_way_to_a_match() -> None:
    regex = compile_regex(r"[A-Z]{2}-\d{3}")
    assert regex.shortest_rest(regex.start) == 6
    assert regex.shortest_rest(regex.feed(regex.start, "AB-1")) == 2
    assert regex.shortest_rest(regex.feed(regex.start, "AB-123")) == 0
    assert regex.can_read_between(regex.start, ord("A"), ord("A"), 6)
    assert not regex.can_read_between(regex.start, ord("A"), ord("A"), 5)  # no room left for the rest
    assert not regex.can_read_between(regex.start, ord("a"), ord("z"), 6)
    assert compile_regex("[^a-c]").can_read_between(compile_regex("[^a-c]").start, ord("a"), ord("d"), 1)
    assert not compile_regex("[^a-c]").can_read_between(compile_regex("[^a-c]").start, ord("a"), ord("c"), 1)


def test_guided_regex_state() -> None:
    state = RegexState.start(r"(yes|no)!?")
    assert state.feed("maybe") is None
    yes = state.feed("yes")
    assert yes is not None and yes.can_end and not yes.complete  # "yes" or "yes!"
    done = state.feed("no!")
    assert done is not None and done.complete


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("(?=a)", "lookaround"), ("a**", "quantifier on a quantifier"), ("(a", "unbalanced '('"),
        ("a)", "unbalanced ')'"), (r"\1", "not supported"), ("a{3,2}", "repeat bounds"), ("[a", "unbalanced '['"),
        ("a\\", "backslash"), (r"\p{L}", "not supported"), ("a^b", "only at the pattern's ends"),
        ("*a", "nothing to repeat"),
        ("a{,2}", "{0,n}"), ("x" * 2000, "at most"), ("(a{1000}){1000}", "automaton states"), (r"\u12", "four hex"),
    ],
)  # fmt: skip
def test_unsupported_patterns_are_refused(pattern: str, words: str) -> None:
    with pytest.raises(InvalidRequestError, match="regex") as info:
        compile_regex(pattern)
    assert words in str(info.value)


@pytest.fixture(scope="module")
def llm(model_dirs: dict[str, Path]) -> LLM:
    return LLM(model_dirs["llama"])


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 3}, {"top_p": 0.9, "seed": 1}])
def test_guided_regex_outputs_match(llm: LLM, sampling: dict) -> None:
    """SamplingParams.guided_regex: every output is a whole match, or the start of one when
    max_tokens runs out; a match that cannot go on ends the request."""
    for pattern in (r"(yes|no)", r"\d{3}-\d{4}", r"[a-z]{2,6}( [a-z]{2,6}){0,3}\.", r"\{\"k\": (true|false)\}"):
        params = SamplingParams(max_tokens=40, guided_regex=pattern, **sampling)
        for out in llm.generate(["Answer:", [5, 6, 7], "hi"], params):
            if out.finish_reason == "stop":
                assert re.fullmatch(pattern, out.text), (pattern, out.text)
            else:
                state = RegexState.start(pattern).feed(out.text)
                assert out.finish_reason == "length" and state is not None, (pattern, out.text)
    with pytest.raises(InvalidRequestError, match="exclude each other"):
        SamplingParams(guided_regex="a", guided_choice=["a"])
    with pytest.raises(InvalidRequestError, match="lookaround"):
        SamplingParams(guided_regex="(?!a)b")
