"""Structured output (`response_format: {"type": "json_schema"}`): a JSON Schema compiled into
the nodes that `schema_grammar` walks, one node per value shape.

What is enforced (and what is refused) is a decision written down in docs/engine.md: a schema
keyword that constrains values and that the grammar cannot enforce is a clear error, never
silently ignored, so a client never trusts output that was not checked. Annotations (title,
description, default, examples, format, ...) are ignored, as JSON Schema's own validators do for
`format`. A string's `pattern` is enforced, in the syntax `regex_nfa` reads. Objects generate
the properties they list, in any order, each at most once, every required one included; other
keys only where `additionalProperties` is a schema, or where the object lists no properties.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

from pdserve.engine.number_bounds import Bounds
from pdserve.engine.regex_nfa import Regex, compile_regex
from pdserve.errors import InvalidRequestError

MAX_SCHEMA_CHARS = 131_072  # the schema's JSON text (128 tools make large ones); it travels with every task
MAX_SCHEMA_NODES = 20_000
MAX_LITERALS = 1_024  # enum values
MAX_NESTING = 64  # schemas inside schemas (compiling recurses once per level)
UNBOUNDED = 1 << 62

# node kinds
ANY, OBJECT, ARRAY, STRING, NUMBER, INTEGER, LITERALS, UNION, ANY_OBJECT = range(9)

_ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "format", "$schema", "$id", "$comment", "$defs",
        "definitions", "deprecated", "readOnly", "writeOnly", "contentMediaType", "contentEncoding",
        "discriminator", "nullable_hint", "x-order",
    }
)  # fmt: skip
# Keywords that constrain values in ways the grammar does not follow: refused, by name.
_UNSUPPORTED = frozenset(
    {
        "patternProperties", "multipleOf", "contains", "minContains", "maxContains", "not",
        "if", "then", "else",
        "dependentRequired", "dependentSchemas", "dependencies", "minProperties", "maxProperties",
        "propertyNames", "unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "additionalItems",
    }
)  # fmt: skip
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


@dataclass(frozen=True, slots=True)
class Node:
    kind: int
    options: tuple[int, ...] = ()  # UNION: the alternatives' nodes
    keys: tuple[str, ...] = ()  # OBJECT: each property's name as JSON writes it, without the opening quote
    values: tuple[int, ...] = ()  # OBJECT: each property's node; ARRAY: its prefixItems' nodes
    required: int = 0  # OBJECT: bit i set when property i must appear
    extra: int = -1  # OBJECT: node of values under other keys (-1: no other keys); ARRAY: items' node
    low: int = 0  # ARRAY: minItems; STRING: minLength
    high: int = UNBOUNDED  # ARRAY: maxItems; STRING: maxLength
    literals: tuple[str, ...] = ()  # LITERALS: the values' compact JSON texts
    regex: Regex | None = None  # STRING: its `pattern` (a match anywhere in it, as JSON Schema means)
    bounds: Bounds | None = None  # NUMBER, INTEGER: minimum, maximum and their exclusive forms


@dataclass(frozen=True, slots=True)
class CompiledSchema:
    nodes: tuple[Node, ...]
    root: int


def schema_text(schema: Any) -> str:
    """The schema as the compact JSON text SamplingParams carries, checked to compile."""
    if isinstance(schema, str):
        text = schema
        if len(text) > MAX_SCHEMA_CHARS:
            raise InvalidRequestError(f"json_schema is {len(text)} characters; at most {MAX_SCHEMA_CHARS}")
        try:
            text.encode()
        except UnicodeEncodeError:
            raise InvalidRequestError("json_schema contains an unpaired UTF-16 surrogate") from None
        try:
            schema = json.loads(text)
        except ValueError as exc:
            raise InvalidRequestError(f"json_schema is not valid JSON: {exc}") from None
    else:
        try:
            # ASCII: a lone surrogate in a schema's string stays an escape, which any wire carries.
            text = json.dumps(schema, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"json_schema must be JSON data: {exc}") from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise InvalidRequestError(f"json_schema is {len(text)} characters; at most {MAX_SCHEMA_CHARS}")
    compiled_schema(text)
    return text


@lru_cache(maxsize=256)
def compiled_schema(text: str) -> CompiledSchema:
    """Compile once per distinct schema text (a schema is usually sent with many requests)."""
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise InvalidRequestError(f"json_schema is not valid JSON: {exc}") from None
    return _Compiler(schema).compiled()


def _bad(where: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"json_schema at {where}: {message}")


class _Compiler:
    def __init__(self, document: Any) -> None:
        self.document = document
        self.nodes: list[Node | None] = []
        self.refs: dict[str, int] = {}
        self.depth = 0

    def compiled(self) -> CompiledSchema:
        root = self.build(self.document, "#")
        nodes = tuple(n for n in self.nodes if n is not None)
        assert len(nodes) == len(self.nodes)  # every $ref placeholder is filled once its target is built
        _check_unions(nodes)
        return CompiledSchema(nodes, root)

    def add(self, node: Node | None) -> int:
        if len(self.nodes) >= MAX_SCHEMA_NODES:
            raise _bad("#", f"more than {MAX_SCHEMA_NODES} schema nodes")
        self.nodes.append(node)
        return len(self.nodes) - 1

    def build(self, schema: Any, where: str) -> int:
        if self.depth >= MAX_NESTING:
            raise _bad(where, f"schemas nested more than {MAX_NESTING} deep")
        self.depth += 1
        try:
            return self._build(schema, where)
        finally:
            self.depth -= 1

    def _build(self, schema: Any, where: str) -> int:
        if schema is True or schema == {}:
            return self.add(Node(ANY))
        if not isinstance(schema, dict):
            raise _bad(where, "a schema must be an object or true (false allows nothing to be generated)")
        unsupported = sorted(k for k in schema if k in _UNSUPPORTED)
        if unsupported:
            raise _bad(where, f"{unsupported[0]!r} is not supported (values would not be checked against it)")
        constraining = {k for k in schema if k not in _ANNOTATIONS}
        if "$ref" in schema:
            if constraining - {"$ref"}:
                raise _bad(where, f"$ref beside {sorted(constraining - {'$ref'})} is not supported")
            return self.ref(schema["$ref"], where)
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1 or constraining - {"allOf"}:
                raise _bad(where, "allOf is supported with exactly one schema and nothing beside it")
            return self.build(parts[0], f"{where}/allOf/0")
        for word in ("anyOf", "oneOf"):
            if word in schema:
                return self.union(schema, word, constraining, where)
        if "const" in schema or "enum" in schema:
            return self.literals(schema, where)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind or not all(t in _TYPES for t in kind):
                raise _bad(where, f"type must name some of {list(_TYPES)}")
            options = tuple(self.build({**schema, "type": t}, where) for t in dict.fromkeys(kind))
            return options[0] if len(options) == 1 else self.add(Node(UNION, options=options))
        if kind is None:
            if {"properties", "required", "additionalProperties"} & constraining:
                kind = "object"
            elif "items" in constraining:
                kind = "array"
            else:
                return self.add(Node(ANY))
        if kind not in _TYPES:
            raise _bad(where, f"unknown type {kind!r}")
        if kind == "object":
            return self.object(schema, where)
        if kind == "array":
            return self.array(schema, where)
        if kind == "string":
            low, high = self.bounds(schema, "minLength", "maxLength", where)
            pattern = schema.get("pattern")
            if pattern is None:
                return self.add(Node(STRING, low=low, high=high))
            if not isinstance(pattern, str):
                raise _bad(where, "pattern must be a string")
            try:
                regex = compile_regex(pattern, search=True)
            except InvalidRequestError as exc:
                raise _bad(where, str(exc)) from None
            return self.add(Node(STRING, low=low, high=high, regex=regex))
        if kind in ("number", "integer"):
            bounds = _bounds(schema, kind == "integer", where)
            return self.add(Node(NUMBER if kind == "number" else INTEGER, bounds=bounds))
        return self.add(Node(LITERALS, literals=("true", "false") if kind == "boolean" else ("null",)))

    def ref(self, ref: Any, where: str) -> int:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _bad(where, f"only local $ref (#/...) is supported, got {ref!r}")
        if ref in self.refs:
            return self.refs[ref]
        target: Any = self.document
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdecimal() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise _bad(where, f"$ref {ref!r} points at nothing")
        # A placeholder first, so a recursive schema refers to the node being built.
        slot = self.refs[ref] = self.add(None)
        built = self.build(target, ref)
        self.nodes[slot] = Node(UNION, options=(built,))
        return slot

    def union(self, schema: dict[str, Any], word: str, constraining: set[str], where: str) -> int:
        parts = schema[word]
        if constraining - {word}:
            raise _bad(where, f"{word} beside {sorted(constraining - {word})} is not supported")
        if not isinstance(parts, list) or not parts:
            raise _bad(where, f"{word} must be a non-empty list of schemas")
        # oneOf is generated as anyOf: an output that fits two alternatives is not refused.
        options = tuple(self.build(part, f"{where}/{word}/{i}") for i, part in enumerate(parts))
        return self.add(Node(UNION, options=options))

    def literals(self, schema: dict[str, Any], where: str) -> int:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list) or not values or len(values) > MAX_LITERALS:
            raise _bad(where, f"enum must be a list of 1 to {MAX_LITERALS} values")
        kinds = schema.get("type")
        if kinds is not None:  # pydantic writes {"enum": [...], "type": "string"}: both must hold
            kinds = kinds if isinstance(kinds, list) else [kinds]
            values = [v for v in values if any(_is_type(v, k) for k in kinds)]
            if not values:
                raise _bad(where, "no enum value has the type given beside it")
        try:
            texts = tuple(
                dict.fromkeys(json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False) for v in values)
            )
        except ValueError as exc:
            raise _bad(where, str(exc)) from None
        return self.add(Node(LITERALS, literals=texts))

    def object(self, schema: dict[str, Any], where: str) -> int:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        extra_schema = schema.get("additionalProperties", True)
        if not isinstance(properties, dict):
            raise _bad(where, "properties must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise _bad(where, "required must be a list of property names")
        if extra_schema is not True and extra_schema is not False and not isinstance(extra_schema, dict):
            raise _bad(where, "additionalProperties must be a boolean or a schema")
        free = isinstance(extra_schema, dict) and extra_schema != {}
        if not properties and not required and extra_schema in (True, {}):
            return self.add(Node(ANY_OBJECT))  # any object at all
        names = list(properties)
        values = [self.build(properties[name], f"{where}/properties/{name}") for name in names]
        for name in required:
            if name not in properties:
                if extra_schema is False:
                    raise _bad(where, f"{name!r} is required but additionalProperties is false")
                names.append(name)
                values.append(self.build(extra_schema, f"{where}/additionalProperties"))
        keys = tuple(json.dumps(name, ensure_ascii=False)[1:] for name in names)
        mask = sum(1 << names.index(name) for name in set(required))
        extra = self.build(extra_schema, f"{where}/additionalProperties") if free else -1
        return self.add(Node(OBJECT, keys=keys, values=tuple(values), required=mask, extra=extra))

    def array(self, schema: dict[str, Any], where: str) -> int:
        low, high = self.bounds(schema, "minItems", "maxItems", where)
        prefix = schema.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise _bad(where, "prefixItems must be a list of schemas")
        firsts = tuple(self.build(item, f"{where}/prefixItems/{i}") for i, item in enumerate(prefix))
        items = schema.get("items", True)
        if items is False:  # nothing past the prefix (a fixed tuple, as pydantic writes them)
            if low > len(firsts):
                raise _bad(where, f"minItems {low} is more than the {len(firsts)} prefixItems allowed")
            return self.add(Node(ARRAY, values=firsts, extra=-1, low=low, high=min(high, len(firsts))))
        rest = self.build(items, f"{where}/items")
        return self.add(Node(ARRAY, values=firsts, extra=rest, low=low, high=high))

    def bounds(self, schema: dict[str, Any], low_word: str, high_word: str, where: str) -> tuple[int, int]:
        low, high = schema.get(low_word, 0), schema.get(high_word, UNBOUNDED)
        for word, value in ((low_word, low), (high_word, high)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _bad(where, f"{word} must be a non-negative integer")
        if low > high:
            raise _bad(where, f"{low_word} {low} is more than {high_word} {high}")
        return low, min(high, UNBOUNDED)


def _check_unions(nodes: tuple[Node, ...]) -> None:
    """A union that reaches itself through unions alone would expand forever before its first
    character: refused."""
    for start, node in enumerate(nodes):
        if node.kind != UNION:
            continue
        seen: set[int] = set()
        todo = list(node.options)
        while todo:
            index = todo.pop()
            if index == start:
                raise _bad("#", "an anyOf/oneOf/$ref that contains itself before any value")
            if index in seen:
                continue
            seen.add(index)
            if nodes[index].kind == UNION:
                todo.extend(nodes[index].options)


def _is_type(value: Any, kind: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    python = {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}.get(kind)
    return python is not None and isinstance(value, python)


def _bounds(schema: dict[str, Any], integer: bool, where: str) -> Bounds | None:
    values: dict[str, Decimal] = {}
    for word in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if word not in schema:
            continue
        value = schema[word]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(where, f"{word} must be a number (draft 4's boolean exclusive bounds are not supported)")
        values[word] = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not values:
        return None
    low = max(
        ((values[w], w == "exclusiveMinimum") for w in ("minimum", "exclusiveMinimum") if w in values),
        key=lambda b: (b[0], b[1]),
        default=(None, False),
    )
    high = min(
        ((values[w], w == "exclusiveMaximum") for w in ("maximum", "exclusiveMaximum") if w in values),
        key=lambda b: (b[0], not b[1]),
        default=(None, False),
    )
    bounds = Bounds(low[0], low[1], high[0], high[1])
    if not bounds.reachable("", integer) and not bounds.reachable("-", integer):
        raise _bad(where, f"no {'integer' if integer else 'number'} satisfies the bounds")
    return bounds
