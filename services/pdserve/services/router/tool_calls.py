"""Tool calls in chat completions: what the request's tools and tool_choice ask of the reply.

A forced call needs no parser, as in vLLM: a named function makes the reply its arguments,
constrained by the function's `parameters` schema; `"required"` makes the reply a JSON array of
`{"name": ..., "parameters": {...}}`, one schema per tool (vLLM's shape), read back into
`tool_calls`. `"auto"` (OpenAI's default once tools are given) lets the model decide, and reads
the calls it writes with the router's `--tool-call-parser` (tool_parsers.py); without one it is
refused, with what to send instead. `"none"` leaves the reply plain text; the tools are still
shown to the template.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from pdserve.services.router.api_requests import ChatCompletionRequest, NamedToolChoice, ToolDef
from pdserve.services.router.api_responses import CalledFunctionOut, ToolCallOut
from pdserve.services.router.errors import invalid_request
from pdserve.services.router.tool_parsers import PARSERS

# Arguments of a function that declares none: any object.
ANY_ARGUMENTS: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What the request's tools and tool_choice ask of the reply."""

    tools: list[dict[str, Any]] | None = None  # for the chat template
    forced: str | None = None  # "named" or "required"; None: the reply is plain text
    name: str | None = None  # the named function
    schema: dict[str, Any] | None = None  # what the reply must satisfy when a call is forced
    parser: str | None = None  # tool_choice "auto": the format calls are read in (tool_parsers.py)

    @classmethod
    def of(cls, body: ChatCompletionRequest, parser: str | None = None) -> ToolPlan:
        tools, choice = body.tools or [], body.tool_choice
        if not tools:
            if choice not in (None, "none"):
                raise invalid_request("tool_choice: needs tools", param="tool_choice")
            return cls()
        names = [t.function.name for t in tools]
        if len(set(names)) != len(names):
            raise invalid_request("tools: function names must be distinct", param="tools")
        rendered = template_tools(tools)
        if choice is None or choice == "auto":
            if parser is not None:
                return cls(tools=rendered, parser=parser)
            raise invalid_request(
                "tool_choice: 'auto' (the default when tools are given) needs a parser for the model's own "
                "tool-call format, and this server runs without one (pdserve router --tool-call-parser hermes "
                "for Hermes-format models such as Qwen); send tool_choice 'required' or "
                "{'type': 'function', 'function': {'name': ...}} to force a call, or 'none'",
                param="tool_choice",
            )
        if choice == "none":
            return cls(tools=rendered)
        if isinstance(choice, NamedToolChoice):
            tool = next((t for t in tools if t.function.name == choice.function.name), None)
            if tool is None:
                raise invalid_request(f"tool_choice: no tool named {choice.function.name!r}", param="tool_choice")
            return cls(rendered, "named", tool.function.name, _arguments_schema(tool))
        return cls(rendered, "required", schema=_calls_schema(tools, one=body.parallel_tool_calls is False))

    def reply(self, text: str, finish_reason: str | None) -> tuple[str | None, list[ToolCallOut] | None, str | None]:
        """The reply's content, its tool calls and its finish reason."""
        calls = self.calls(text)
        if calls is None and self.parser is not None:
            parsed = PARSERS[self.parser][0](text)
            if parsed is not None:
                content, found = parsed
                return content, [call_out(c.name, c.arguments, c.id) for c in found], calls_finish(finish_reason)
        if calls is None:
            return text, None, finish_reason
        return None, calls, calls_finish(finish_reason) if self.forced == "required" else finish_reason

    def calls(self, text: str) -> list[ToolCallOut] | None:
        """A forced reply's tool calls, or None if it holds none (an unforced reply, or a forced
        one cut short by max_tokens that is not a whole array of calls)."""
        if self.forced == "named":
            assert self.name is not None
            return [call_out(self.name, text)]  # what the model wrote, whole or not, as OpenAI returns it
        if self.forced != "required":
            return None
        try:
            written = json.loads(text)
        except ValueError:
            return None
        return [
            call_out(item["name"], json.dumps(item["parameters"], ensure_ascii=False))
            for item in written
            if isinstance(item, dict) and isinstance(item.get("name"), str) and "parameters" in item
        ]


def template_tools(tools: list[ToolDef]) -> list[dict[str, Any]]:
    """Tool definitions as chat templates take them (OpenAI's shape, unset fields left out); chat
    completions and /tokenize render them alike, so a token count matches the prompt."""
    return [t.model_dump(exclude_none=True) for t in tools]


def calls_finish(finish_reason: str | None) -> str | None:
    # OpenAI: "tool_calls" when the model called on its own accord or had to call some tool; a
    # call forced by name ends with "stop".
    return "tool_calls" if finish_reason == "stop" else finish_reason


def call_out(name: str, arguments: str, id_: str | None = None) -> ToolCallOut:
    return ToolCallOut(id=id_ or call_id(), type="function", function=CalledFunctionOut(name=name, arguments=arguments))


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _arguments_schema(tool: ToolDef) -> dict[str, Any]:
    return tool.function.parameters if tool.function.parameters is not None else ANY_ARGUMENTS


def _calls_schema(tools: list[ToolDef], one: bool) -> dict[str, Any]:
    # Each tool's parameters become a $defs entry of the new root, their own local $refs
    # rewritten to point inside it ("#/$defs/x" of tool 2 is "#/$defs/pdserve_tool_2/$defs/x").
    defs = {
        f"pdserve_tool_{i}": _rebase(_arguments_schema(t), f"#/$defs/pdserve_tool_{i}") for i, t in enumerate(tools)
    }
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.function.name}, "parameters": {"$ref": f"#/$defs/pdserve_tool_{i}"}},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for i, t in enumerate(tools)
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": options}, "$defs": defs}
    if one:
        schema["maxItems"] = 1
    return schema


def _rebase(schema: Any, root: str) -> Any:
    if isinstance(schema, dict):
        return {
            k: (root + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#") else _rebase(v, root))
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_rebase(v, root) for v in schema]
    return schema
