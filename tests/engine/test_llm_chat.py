"""LLM.chat: conversations through the chat template, as vLLM's offline `LLM.chat`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pdserve import LLM, SamplingParams
from pdserve.errors import InvalidRequestError

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def llm(model_dirs: dict[str, Path]) -> LLM:
    return LLM(model_dirs["llama"])


def test_chat_is_generate_on_the_rendered_conversation(llm: LLM) -> None:
    params = SamplingParams(max_tokens=8, temperature=0.0)
    rendered = llm.tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_dict=False)
    [out] = llm.chat(CONVERSATION, params)
    assert out.prompt_token_ids == list(rendered)
    assert out.token_ids == llm.generate([list(rendered)], params)[0].token_ids
    # Several conversations, tools for the template, and a grammar, as over HTTP.
    other = [{"role": "user", "content": "Give me JSON"}]
    params = SamplingParams(max_tokens=64, temperature=0.0, json_object=True)
    outs = llm.chat([CONVERSATION, other], params, tools=TOOLS)
    with_tools = llm.tokenizer.apply_chat_template(other, tools=TOOLS, add_generation_prompt=True, return_dict=False)
    assert len(outs) == 2 and outs[1].prompt_token_ids == list(with_tools)
    for out in outs:
        assert out.finish_reason == "length" or isinstance(json.loads(out.text), dict)


@pytest.mark.parametrize("messages", [[], [[]], "hello", [{"content": "no role"}], [["not a message"]]])
def test_bad_conversations_are_clear_errors(llm: LLM, messages: object) -> None:
    with pytest.raises(InvalidRequestError):
        llm.chat(messages)  # type: ignore[arg-type]


def test_chat_template_replaces_the_models(llm: LLM) -> None:
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    params = SamplingParams(max_tokens=4, temperature=0.0)
    [out] = llm.chat(CONVERSATION, params, chat_template=template)
    text = "[system] Be brief.\n[user] Hi\n[assistant]"
    assert out.prompt_token_ids == list(llm.tokenizer(text, add_special_tokens=False).input_ids)


def test_render_options(llm: LLM) -> None:
    """vLLM's LLM.chat options: continue the last assistant message, template variables."""
    params = SamplingParams(max_tokens=2, temperature=0.0)
    started = [*CONVERSATION, {"role": "assistant", "content": "Once upon"}]
    [out] = llm.chat(started, params, add_generation_prompt=False, continue_final_message=True)
    want = llm.tokenizer.apply_chat_template(started, continue_final_message=True, return_dict=False)
    assert out.prompt_token_ids == list(want)
    template = "{{ greeting }}{% for m in messages %}{{ m.content }}{% endfor %}"
    [out] = llm.chat(CONVERSATION, params, chat_template=template, chat_template_kwargs={"greeting": "Hey! "})
    assert out.prompt_token_ids == list(llm.tokenizer("Hey! Be brief.Hi", add_special_tokens=False).input_ids)
    with pytest.raises(InvalidRequestError, match="add_generation_prompt"):
        llm.chat(started, params, continue_final_message=True)
