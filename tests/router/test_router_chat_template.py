"""--chat-template over HTTP: it renders chat and /tokenize, and makes chat work for a model without one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pdserve.engine.llm_engine import LLMEngine
from pdserve.models import builtin_model_path
from pdserve.services.router import create_app
from pdserve.serving.local_backend import LocalBackend
from router_helpers import MODEL, assert_error
from transformers import AutoTokenizer

TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.fixture
def bare_tokenizer() -> object:
    """The built-in model's tokenizer without its chat template, as a base model ships."""
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path(), local_files_only=True)
    tokenizer.chat_template = None
    return tokenizer


async def client_for(backend: LocalBackend, tokenizer: object, template: str | None) -> httpx.AsyncClient:
    app = create_app(backend, tokenizer, model_name=MODEL, chat_template=template)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://router")


@pytest.fixture
async def templated(backend: LocalBackend, bare_tokenizer: object) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(backend, bare_tokenizer, TEMPLATE) as client:
        yield client


async def test_the_given_template_renders_chat_and_tokenize(
    templated: httpx.AsyncClient, bare_tokenizer: object, engine: LLMEngine
) -> None:
    rendered = "<system>Be brief.\n<user>Hi\n<assistant>"
    want = list(bare_tokenizer(rendered, add_special_tokens=False).input_ids)  # type: ignore[operator]
    tokens = (await templated.post("/tokenize", json={"messages": MESSAGES})).json()["tokens"]
    assert tokens == want
    body = {"messages": MESSAGES, "max_tokens": 3, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    reply = await templated.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["prompt_token_ids"] == want


async def test_without_a_template_chat_says_how_to_get_one(backend: LocalBackend, bare_tokenizer: object) -> None:
    async with await client_for(backend, bare_tokenizer, None) as client:
        reply = await client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2})
    error = assert_error(reply, 400, None)
    assert "--chat-template" in error["message"]


def test_a_broken_template_is_refused_at_creation(backend: LocalBackend, bare_tokenizer: object) -> None:
    with pytest.raises(ValueError, match="syntax error"):
        create_app(backend, bare_tokenizer, model_name=MODEL, chat_template="{% if x %}")


@pytest.mark.parametrize("command", ["router", "up"])
def test_a_missing_template_file_stops_the_command_at_once(tmp_path: Path, command: str) -> None:
    missing = str(tmp_path / "nope.jinja")
    argv = [sys.executable, "-m", "pdserve.cli", command, "--chat-template", missing]
    if command == "router":
        argv += ["--nats", "nats://127.0.0.1:1"]  # never reached: the check comes first
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"--chat-template {missing}: no such file" in done.stderr


# transformers renders with trim_blocks: a newline right after a block tag is dropped, hence {{ nl }}.
THINKING = (
    "{% set nl = '\\n' %}{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% if not loop.last or add_generation_prompt %}{{ nl }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>"
    "{% if enable_thinking is defined and not enable_thinking %}<no-think>{% endif %}{% endif %}"
)


@pytest.fixture
async def thinking(backend: LocalBackend, bare_tokenizer: object) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(backend, bare_tokenizer, THINKING) as client:
        yield client


async def test_render_options_reach_the_template(thinking: httpx.AsyncClient, bare_tokenizer: object) -> None:
    """vLLM's add_generation_prompt, continue_final_message and chat_template_kwargs, in chat and /tokenize."""

    def ids(text: str) -> list[int]:
        return list(bare_tokenizer(text, add_special_tokens=False).input_ids)  # type: ignore[operator]

    async def tokens(messages: list[dict], **options: object) -> list[int]:
        reply = await thinking.post("/tokenize", json={"messages": messages, **options})
        assert reply.status_code == 200, reply.text
        return list(reply.json()["tokens"])

    assert await tokens(MESSAGES) == ids("<system>Be brief.\n<user>Hi\n<assistant>")
    assert await tokens(MESSAGES, chat_template_kwargs={"enable_thinking": False}) == ids(
        "<system>Be brief.\n<user>Hi\n<assistant><no-think>"
    )
    assert await tokens(MESSAGES, add_generation_prompt=False) == ids("<system>Be brief.\n<user>Hi")
    started = [*MESSAGES, {"role": "assistant", "content": "Once upon"}]
    continued = await tokens(started, add_generation_prompt=False, continue_final_message=True)
    assert continued == ids("<system>Be brief.\n<user>Hi\n<assistant>Once upon")
    # Chat renders the same way: the prompt it sends is what /tokenize says.
    body = {"messages": started, "add_generation_prompt": False, "continue_final_message": True}
    reply = await thinking.post("/v1/chat/completions", json={**body, "max_tokens": 2, "return_token_ids": True})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["prompt_token_ids"] == continued


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"continue_final_message": True}, "continue_final_message"),  # with add_generation_prompt's default true
        ({"chat_template_kwargs": {"tools": []}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": {f"k{i}": i for i in range(65)}}, "chat_template_kwargs"),
        ({"chat_template_kwargs": "enable_thinking"}, "chat_template_kwargs"),
        ({"add_generation_prompt": "yes"}, "add_generation_prompt"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
async def test_bad_render_options_are_400(thinking: httpx.AsyncClient, options: dict, param: str, path: str) -> None:
    reply = await thinking.post(path, json={"messages": MESSAGES, "max_tokens": 2, **options} if path != "/tokenize"
                                else {"messages": MESSAGES, **options})  # fmt: skip
    assert_error(reply, 400, param)
