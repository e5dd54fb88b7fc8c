"""The offline API: `LLM(model=DIR).generate(prompts, SamplingParams(...))`, and `chat(messages)`."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import replace
from pathlib import Path
from typing import Any

import jinja2
import torch
from tqdm import tqdm

from pdserve.engine.config import EngineConfig
from pdserve.engine.llm_engine import LLMEngine, Prompt
from pdserve.errors import InvalidRequestError
from pdserve.models import builtin_model_path
from pdserve.models.chat_template import load_chat_template
from pdserve.models.generation_defaults import generation_defaults
from pdserve.outputs import RequestOutput
from pdserve.sampling_params import SamplingParams, choice_seed

Conversation = Seq[dict[str, Any]]  # chat messages, as OpenAI's API and chat templates take them


class LLM:
    """Runs the serving engine in-process over a batch of prompts.

    `model` is a local Hugging Face directory, or None for the built-in tiny model. Engine
    sizes (block_size, num_kv_blocks, kv_cache_bytes, max_num_batched_tokens, max_num_seqs,
    max_model_len, enable_prefix_caching) can be passed as keyword arguments.
    `generation_config` ("auto": the model's generation_config.json; "vllm": none; or a folder)
    gives the sampling defaults `generate` uses when no params are passed, as vLLM's LLM does
    (`get_default_sampling_params`).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        dtype: str | torch.dtype = "auto",
        device: str = "cpu",
        seed: int | None = 0,
        generation_config: str = "auto",
        **engine_options: object,
    ) -> None:
        try:
            config = EngineConfig(**engine_options)  # type: ignore[arg-type]
        except TypeError as exc:
            raise InvalidRequestError(f"unknown engine option: {exc}") from exc
        self.engine = LLMEngine.from_model(model, dtype=dtype, device=device, config=config, seed=seed)
        self._sampling_defaults = generation_defaults(
            builtin_model_path() if model is None else Path(model).expanduser(), generation_config
        )
        self.tokenizer = self.engine.tokenizer
        self._next_id = 0

    def get_tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (vLLM's `LLM.get_tokenizer`)."""
        return self.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams() with the model's own defaults (generation_config.json) where it has them."""
        return SamplingParams(**self._sampling_defaults)

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        use_tqdm: bool = False,
        priority: Seq[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (a string or a list of token ids); outputs in prompt order.

        `priority` (vLLM's: one per prompt, lower first) needs an LLM built with
        `scheduling_policy="priority"`; it sets each prompt's SamplingParams.priority.
        All prompts are validated before any runs, so a bad one fails the call cleanly.
        """
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompt_list: list[Prompt] = list(prompts)  # type: ignore[arg-type]
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        params_list = (
            [sampling_params] * len(prompt_list)
            if isinstance(sampling_params, SamplingParams)
            else list(sampling_params)
        )
        if len(params_list) != len(prompt_list):
            raise InvalidRequestError(f"{len(prompt_list)} prompts but {len(params_list)} sampling params")
        if priority is not None:
            if len(priority) != len(prompt_list):
                raise InvalidRequestError(f"{len(prompt_list)} prompts but {len(priority)} priorities")
            params_list = [replace(p, priority=level) for p, level in zip(params_list, priority, strict=True)]
        for p in params_list:
            self.engine.check_params(p)
        token_prompts = [
            self.engine.tokenize(prompt, params.truncate_prompt_tokens)
            for prompt, params in zip(prompt_list, params_list, strict=True)
        ]

        ids: list[str] = []
        groups: list[list[str]] = []  # per prompt, the request ids of its n choices
        for tokens, params in zip(token_prompts, params_list, strict=True):
            group = []
            for choice in range(params.n):
                request_id = f"offline-{self._next_id}"
                self._next_id += 1
                self.engine.add_request(request_id, tokens, choice_params(params, choice))
                group.append(request_id)
            ids += group
            groups.append(group)
        finished: dict[str, RequestOutput] = {}
        try:
            with tqdm(total=len(ids), disable=not use_tqdm, desc="generate", unit="req") as bar:
                while len(finished) < len(ids):
                    for out in self.engine.step():
                        if out.finished:
                            finished[out.request_id] = out
                            bar.update(1)
        except BaseException:
            for request_id in ids:
                if request_id not in finished:
                    self.engine.abort_request(request_id)
            self.engine.step()  # drain the abort outputs
            raise
        results = [_grouped([finished[i] for i in group]) for group in groups]
        for prompt, out in zip(prompt_list, results, strict=True):
            _set_prompt(out, prompt if isinstance(prompt, str) else None)
        return results

    def chat(
        self,
        messages: Conversation | Seq[Conversation],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        tools: list[dict[str, Any]] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate a reply to each conversation (a list of {"role", "content", ...} messages,
        or a list of such lists), rendered by the model's chat template with the assistant's turn
        opened, as vLLM's `LLM.chat` does; `tools` (OpenAI's tool definitions) go to the template.
        `chat_template` (template text or a file; None: the tokenizer's) replaces the model's.
        `add_generation_prompt`, `continue_final_message` (the reply continues the last, assistant
        message) and `chat_template_kwargs` (extra template variables) are vLLM's."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        if not conversations or not all(
            isinstance(c, list) and c and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in c)
            for c in conversations
        ):
            raise InvalidRequestError(
                "messages must be a conversation (a non-empty list of messages, each a dict with a 'role') "
                "or a list of them"
            )
        if add_generation_prompt and continue_final_message:
            raise InvalidRequestError("continue_final_message needs add_generation_prompt=False")
        template = None if chat_template is None else load_chat_template(chat_template)
        options = {
            "chat_template": template,
            "add_generation_prompt": add_generation_prompt,
            "continue_final_message": continue_final_message,
            **(chat_template_kwargs or {}),
        }
        prompts: list[Prompt] = [self._render(c, tools, options) for c in conversations]  # type: ignore[arg-type]
        results = self.generate(prompts, sampling_params, use_tqdm=use_tqdm)
        for conversation, out in zip(conversations, results, strict=True):
            _set_prompt(out, self._render_text(conversation, tools, options))  # type: ignore[arg-type]
        return results

    def _render(
        self, conversation: Conversation, tools: list[dict[str, Any]] | None, options: dict[str, Any]
    ) -> list[int]:
        tokenizer: Any = self.tokenizer  # transformers' stubs do not cover the template's arguments
        if options["chat_template"] is None and getattr(tokenizer, "chat_template", None) is None:
            raise InvalidRequestError("this model has no chat template; pass chat_template, or use generate()")
        try:
            ids = tokenizer.apply_chat_template(
                list(conversation), tools=tools, tokenize=True, return_dict=False, **options
            )
        except (jinja2.TemplateError, ValueError, TypeError) as exc:
            raise InvalidRequestError(f"the chat template refused the conversation: {exc}") from None
        return [int(t) for t in ids]

    def _render_text(
        self, conversation: Conversation, tools: list[dict[str, Any]] | None, options: dict[str, Any]
    ) -> str:
        """The rendered conversation as text, for RequestOutput.prompt (it rendered once already)."""
        tokenizer: Any = self.tokenizer
        return str(tokenizer.apply_chat_template(list(conversation), tools=tools, tokenize=False, **options))


def choice_params(params: SamplingParams, choice: int) -> SamplingParams:
    """Choice i of a prompt: seed + i (so choice 0 equals the same request with n=1), one sequence."""
    if params.n == 1:
        return params
    return replace(params, n=1, seed=choice_seed(params.seed, choice))


def _set_prompt(out: RequestOutput, prompt: str | None) -> None:
    for each in out.choices or [out]:
        each.prompt = prompt


def _grouped(outputs: list[RequestOutput]) -> RequestOutput:
    if len(outputs) == 1:
        return outputs[0]
    for index, out in enumerate(outputs):
        out.index = index
    first = replace(outputs[0])
    first.choices = [first, *outputs[1:]]
    return first
