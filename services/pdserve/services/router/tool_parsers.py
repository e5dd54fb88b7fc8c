"""Tool calls a model writes on its own (`tool_choice: "auto"`), in the model's own format,
selected with the router's `--tool-call-parser NAME` (vLLM's flag and names):

- `hermes` (Qwen 2.5 and 3, Hermes 2 Pro and 3, many fine-tunes): each call a JSON object
  `{"name": ..., "arguments": {...}}` between `<tool_call>` and `</tool_call>`, after any text
  the model writes first.
- `llama3_json` (Llama 3.1 to 3.3 with JSON tool calling): the whole reply is one or more JSON
  objects `{"name": ..., "parameters": {...}}`, separated by `;` (after `<|python_tag|>`, a
  special token the text leaves out).
- `mistral` (Mistral 7B v0.3, Nemo, Small): `[TOOL_CALLS]` then a JSON array of
  `{"name": ..., "arguments": {...}}` (tokenizer v3), or `name[ARGS]{...}` per call (v11).
  `[TOOL_CALLS]` is a special token, so requests read with this parser keep special tokens in
  their text (as vLLM does), and call ids are the 9 letters and digits Mistral's templates demand.
- `pythonic` (Llama 3.2 and 4): the whole reply is a Python list of calls with keyword
  arguments, `[get_weather(city="Paris"), get_time()]`, read by Python's parser and never run.

Each parser reads a whole reply (`parse`) and a streamed one (`stream()`: pieces of text and
whole calls as they become certain).
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from pdserve.services.router.text_tags import tag_start_at_end

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text
    id: str | None = None  # the call's id, where the format wants ids of its own (else the router's)


def parse_hermes(text: str) -> tuple[str | None, list[ParsedCall]] | None:
    """The text ahead of the calls (None if blank) and the calls; None when the text holds no
    call or a block that is not one (then the reply is plain text, as vLLM answers it)."""
    start = text.find(OPEN)
    if start < 0:
        return None
    calls = []
    for block in _BLOCK.finditer(text, start):
        call = _call(block.group(1))
        if call is None:
            return None
        calls.append(call)
    if not calls:
        return None
    return text[:start].strip() or None, calls


def _call(body: str) -> ParsedCall | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return _call_of(value)


def _call_of(value: object) -> ParsedCall | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ParsedCall(value["name"], arguments)


class HermesStream:
    """Splits a streamed reply into text pieces and whole calls: text goes out as it comes,
    except a tail that may be the start of `<tool_call>`; a call goes out once its block closes
    (a block that is not a call goes out as text)."""

    def __init__(self) -> None:
        self.buffer = ""
        self.in_call = False
        self.calls = 0

    def push(self, text: str) -> list[str | ParsedCall]:
        self.buffer += text
        out: list[str | ParsedCall] = []
        while True:
            if not self.in_call:
                start = self.buffer.find(OPEN)
                if start < 0:
                    keep = tag_start_at_end(self.buffer, OPEN)
                    self._text(out, self.buffer[: len(self.buffer) - keep])
                    self.buffer = self.buffer[len(self.buffer) - keep :]
                    return out
                self._text(out, self.buffer[:start])
                self.buffer, self.in_call = self.buffer[start + len(OPEN) :], True
            end = self.buffer.find(CLOSE)
            if end < 0:
                return out
            call = _call(self.buffer[:end])
            if call is None:
                self._text(out, OPEN + self.buffer[: end + len(CLOSE)])
            else:
                out.append(call)
                self.calls += 1
            self.buffer, self.in_call = self.buffer[end + len(CLOSE) :], False

    def finish(self) -> list[str | ParsedCall]:
        """What is still held: an unclosed block or a possible tag start, as text."""
        rest = (OPEN if self.in_call else "") + self.buffer
        self.buffer, self.in_call = "", False
        out: list[str | ParsedCall] = []
        self._text(out, rest)
        return out

    def _text(self, out: list[str | ParsedCall], text: str) -> None:
        # Blanks between and after calls are not content (the non-streamed reply strips them too).
        if text and not (self.calls and text.isspace()):
            out.append(text)


def parse_llama3_json(text: str) -> tuple[str | None, list[ParsedCall]] | None:
    """The calls when the whole reply is JSON calls separated by ';', else None (plain text)."""
    body = text.strip()
    if not body.startswith("{"):
        return None
    decoder, calls, position = json.JSONDecoder(), [], 0
    while position < len(body):
        try:
            value, position = decoder.raw_decode(body, position)
        except ValueError:
            return None
        call = _call_of(value)
        if call is None:
            return None
        calls.append(call)
        while position < len(body) and (body[position].isspace() or body[position] == ";"):
            position += 1
    return None, calls


class Llama3JsonStream:
    """A reply that opens with '{' is held whole and read at the end; any other streams as text."""

    opener = "{"
    parse = staticmethod(parse_llama3_json)

    def __init__(self) -> None:
        self.mode = "undecided"  # until the first character that is not a blank: "text" or "calls"
        self.held = ""
        self.calls = 0

    def push(self, text: str) -> list[str | ParsedCall]:
        if self.mode == "text":
            return [text] if text else []
        self.held += text
        if self.mode == "undecided" and self.held.strip():
            self.mode = "calls" if self.held.lstrip().startswith(self.opener) else "text"
            if self.mode == "text":
                out, self.held = self.held, ""
                return [out]
        return []

    def finish(self) -> list[str | ParsedCall]:
        held, self.held = self.held, ""
        parsed = self.parse(held) if self.mode == "calls" else None
        if parsed is None:
            return [held] if held else []
        self.calls = len(parsed[1])
        return list(parsed[1])


# Mistral: "[TOOL_CALLS]" (a special token, kept in the text for this parser) and then either a
# JSON array of {"name", "arguments"} (Mistral 7B v0.3, Nemo: tokenizer v3) or, per call,
# "name[ARGS]{...}" (Mistral Small 3.1 and later: tokenizer v11).
MISTRAL_CALLS, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
_MISTRAL_ID = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def mistral_call_id() -> str:
    """Mistral's templates refuse any tool call id but 9 letters and digits."""
    return "".join(secrets.choice(_MISTRAL_ID) for _ in range(9))


def parse_mistral(text: str) -> tuple[str | None, list[ParsedCall]] | None:
    """The text ahead of `[TOOL_CALLS]` (None if blank) and the calls after it; None when there
    is no marker or what follows is not calls (then the reply is plain text)."""
    start = text.find(MISTRAL_CALLS)
    if start < 0:
        return None
    calls: list[ParsedCall] = []
    for segment in text[start + len(MISTRAL_CALLS) :].split(MISTRAL_CALLS):
        found = _mistral_segment(segment)
        if found is None:
            return None
        calls += found
    if not calls:
        return None
    return text[:start].strip() or None, calls


def _mistral_segment(segment: str) -> list[ParsedCall] | None:
    body = segment.strip()
    decoder = json.JSONDecoder()
    if body.startswith("["):  # v3: one array of calls
        try:
            value, end = decoder.raw_decode(body)
        except ValueError:
            return None
        if body[end:].strip() or not isinstance(value, list):
            return None
        calls = [_call_of(item) for item in value]
        return None if any(c is None for c in calls) else [_with_id(c) for c in calls if c is not None]
    name, marker, arguments = body.partition(MISTRAL_ARGS)  # v11: name[ARGS]{...}
    if not marker or not name.strip() or any(c.isspace() for c in name.strip()):
        return None
    try:
        value, end = decoder.raw_decode(arguments.strip())
    except ValueError:
        return None
    if arguments.strip()[end:].strip() or not isinstance(value, dict):
        return None
    return [ParsedCall(name.strip(), json.dumps(value, ensure_ascii=False), mistral_call_id())]


def _with_id(call: ParsedCall) -> ParsedCall:
    return ParsedCall(call.name, call.arguments, mistral_call_id())


class MistralStream:
    """Text streams until `[TOOL_CALLS]` (a tail that may start it is held); from the marker on,
    everything is held and read as calls at the end (as text if it is not calls)."""

    def __init__(self) -> None:
        self.buffer = ""
        self.in_calls = False
        self.calls = 0

    def push(self, text: str) -> list[str | ParsedCall]:
        self.buffer += text
        if self.in_calls:
            return []
        start = self.buffer.find(MISTRAL_CALLS)
        if start >= 0:
            out, self.buffer, self.in_calls = self.buffer[:start], self.buffer[start:], True
            return [out] if out else []
        keep = tag_start_at_end(self.buffer, MISTRAL_CALLS)
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return [out] if out else []

    def finish(self) -> list[str | ParsedCall]:
        held, self.buffer = self.buffer, ""
        parsed = parse_mistral(held) if self.in_calls else None
        if parsed is None:
            return [held] if held else []
        self.calls = len(parsed[1])
        return list(parsed[1])


def parse_pythonic(text: str) -> tuple[str | None, list[ParsedCall]] | None:
    """Llama 3.2 and 4's pythonic calls: the whole reply is a list of calls with keyword arguments
    of literal values, `[get_weather(city="Paris"), get_time()]`; else None (plain text). Read with
    Python's parser, never run: anything but names, keywords and literals is plain text."""
    body = text.strip()
    if not body.startswith("["):
        return None
    try:
        tree = ast.parse(body, mode="eval").body
        if not isinstance(tree, ast.List) or not tree.elts:
            return None
        calls = []
        for node in tree.elts:
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
                return None
            if any(k.arg is None for k in node.keywords):  # **kwargs
                return None
            arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
            calls.append(ParsedCall(node.func.id, json.dumps(arguments, ensure_ascii=False)))
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return None  # not calls, or values JSON cannot hold (sets, bytes, complex numbers)
    return None, calls


class PythonicStream(Llama3JsonStream):
    """A reply that opens with '[' is held whole and read at the end; any other streams as text."""

    opener = "["
    parse = staticmethod(parse_pythonic)


Parse = Callable[[str], "tuple[str | None, list[ParsedCall]] | None"]
PARSERS: dict[str, tuple[Parse, Callable[[], HermesStream | Llama3JsonStream | MistralStream]]] = {
    "hermes": (parse_hermes, HermesStream),
    "llama3_json": (parse_llama3_json, Llama3JsonStream),
    "mistral": (parse_mistral, MistralStream),
    "pythonic": (parse_pythonic, PythonicStream),
}
# Formats whose marker is a special token: the text must keep special tokens to show it.
KEEPS_SPECIAL_TOKENS = frozenset({"mistral"})
TOOL_CALL_PARSERS = tuple(PARSERS)
