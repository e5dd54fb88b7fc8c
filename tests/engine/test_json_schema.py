"""Structured output (SamplingParams.json_schema): the schema compiler, the grammar (checked
against an independent validator, jsonschema_rs) and engine outputs that satisfy the schema."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from pdserve import LLM, SamplingParams
from pdserve.engine.json_grammar import MAX_BLANK_RUN
from pdserve.engine.json_schema import MAX_NESTING, MAX_SCHEMA_CHARS, compiled_schema, schema_text
from pdserve.engine.schema_grammar import SchemaState
from pdserve.errors import InvalidRequestError
from pdserve.protocol.messages import params_from_wire, params_to_wire

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["a", "ab", 1, None]}, "maxItems": 3},
        "kind": {"anyOf": [{"type": "number"}, {"type": "null"}, {"$ref": "#/$defs/Tree"}]},
        "extra": {},
        "flags": {"type": "object", "additionalProperties": {"type": "boolean"}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
    "$defs": {"Tree": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Tree"}}}},
}
SCHEMAS: dict[str, Any] = {
    "person": PERSON,
    "integer": {"type": "integer"},
    "enum": {"enum": [1, 12, "x y", [1, 2], {"k": None}, True]},
    "array": {"type": "array", "items": {"type": ["string", "number"], "minLength": 2}, "minItems": 2, "maxItems": 4},
    "nullable": {"type": ["object", "null"], "properties": {"ab": {"const": 5}, "a": {"type": "boolean"}}},
    "any": {},
    "map": {"type": "object", "properties": {"id": {"type": "integer"}}, "additionalProperties": {"type": "string"}},
    "oneof": {"oneOf": [{"type": "string", "maxLength": 1}, {"type": "array", "items": {"type": "integer"}}]},
    "tuple": {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"enum": ["a", "b"]}],
        "items": False,
        "minItems": 2,
    },
    "tuple_open": {"type": "array", "prefixItems": [{"type": "string", "maxLength": 2}], "items": {"type": "boolean"}},
    "bounds": {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 3, "maximum": 17},
            "x": {"type": "number", "exclusiveMinimum": -2.5, "exclusiveMaximum": 0.25},
            "big": {"type": "integer", "minimum": 100},
        },
        "required": ["n", "x"],
        "additionalProperties": False,
    },
    "pattern": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
            "tag": {"type": "string", "pattern": "ab|x+", "maxLength": 6},
        },
        "required": ["code", "tag"],
        "additionalProperties": False,
    },
}
ACCEPTED = {
    "person": [
        '{"name":"bob","age":3}',
        '{ "age" : -12 , "name" : "x\\u00e9\\n", "tags" : [ "ab" , 1, null ], "kind": {"child": {"child": {}}}, '
        '"extra": [1, {"a": [true]}], "flags": {"p": true, "name": false}}',
        '{"name":"","age":0,"kind":1.5e3}',
        '{"kind":null,"age":7,"name":"é🙂"}',
    ],
    "integer": ["0", "-7", "123 "],
    "enum": ["1", "12", '"x y"', "[1,2]", '{"k":null}', "true"],
    "array": ['["ab", 1.5]', '[1,2,3,"xyz"]'],
    "nullable": ["null", "{}", '{"ab":5,"a":false}', '{"a":true}'],
    "any": ["1", '"s"', '{"a":[]}', "[]", "null", "-0.5e-3"],
    "map": ['{"id":1,"x":"y"}', '{"x":"y","id":2,"z":""}', "{}"],
    "oneof": ['"a"', '""', "[1,-2]", "[]"],
    "tuple": ['[1,"a"]', '[ -3 , "b" ]'],
    "tuple_open": ['["xy"]', '["", true, false]', "[]"],
    "bounds": ['{"n":3,"x":-2.49}', '{"x":0.2499,"n":17,"big":100}', '{"n":10,"x":-0,"big":123456789012}'],
    "pattern": [
        '{"code":"AB-123","tag":"zaby"}',
        '{"tag":"xx","code":"\\u0041B-123"}',
        '{"code":"ZZ-000","tag":"x\\n"}',
    ],
}
REFUSED = {
    "person": [
        '{"name":"123456789","age":1}',  # maxLength
        '{"age":1}',  # name is required
        '{"name":"a","age":1.5}',  # not an integer
        '{"name":"a","age":1,"zz":1}',  # no other properties
        '{"name":"a","name":"b","age":1}',  # each property once
        '{"name":"a","age":1,"tags":[1,1,1,1]}',  # maxItems
        '{"name":"a","age":1,"flags":{"k":1}}',  # flags' values are booleans
        '{"name":"a","age":1,"kind":"s"}',  # none of anyOf
        '["name"]',
    ],
    "integer": ["1.5", "1e3", '"1"', "01"],
    "enum": ["2", "123", '"x"', "[1, 2]", "false"],  # enum values as compact JSON
    "array": ['["a", 1]', "[1]", "[1,2,3,4,5]", '[{"a":1},2]'],
    "nullable": ['{"ab":6}', "[]", '{"c":1}'],
    "map": ['{"id":"1"}', '{"x":1}', '{"id":1,"id":2}'],
    "oneof": ['"ab"', "[1.5]", "{}"],
    "tuple": ["[1]", '[1,"a",2]', '["a",1]', '[1,"c"]'],
    "tuple_open": ["[true]", '["abc"]', '["a", 1]'],
    "bounds": ['{"n":2,"x":0}', '{"n":18,"x":0}', '{"n":3,"x":-2.5}', '{"n":3,"x":0.25}', '{"n":3,"x":0,"big":99}'],
}

# Valid for JSON Schema, refused on purpose: other properties where the schema lists some,
# duplicate keys, enum values not in compact form, integers written with an exponent.
STRICTER = {
    '{"name":"a","age":1,"zz":1}',
    '{"c":1}',
    '{"name":"a","name":"b","age":1}',
    "[1, 2]",
    '{"id":1,"id":2}',
    "1e3",
}


def feed(schema: Any, text: str) -> SchemaState | None:
    return SchemaState.start(compiled_schema(schema_text(schema))).feed(text)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_grammar_accepts_valid_documents_and_every_prefix(name: str) -> None:
    start = SchemaState.start(compiled_schema(schema_text(SCHEMAS[name])))
    validator = jsonschema_rs.validator_for(SCHEMAS[name])
    for text in ACCEPTED[name]:
        assert validator.is_valid(json.loads(text)), text  # the examples themselves are right
        state: SchemaState | None = start
        for char in text:
            assert state is not None, (text, char)
            state = state.feed(char)
        assert state is not None and state.can_end, text


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_grammar_refuses_invalid_documents(name: str) -> None:
    validator = jsonschema_rs.validator_for(SCHEMAS[name])
    for text in REFUSED[name]:
        state = feed(SCHEMAS[name], text)
        assert state is None or not state.can_end, text
        try:
            document = json.loads(text)
        except ValueError:
            continue
        if text not in STRICTER:
            assert not validator.is_valid(document), text


def _finite(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else 1.0  # 1e999 is a JSON number; Python reads inf


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_whatever_the_grammar_completes_the_validator_accepts(name: str) -> None:
    """Random walks: at each step a random character or key the grammar allows; every finished
    document must satisfy the schema, and its compact and indented forms must be accepted too."""
    schema = SCHEMAS[name]
    start = SchemaState.start(compiled_schema(schema_text(schema)))
    validator = jsonschema_rs.validator_for(schema)
    rng = random.Random(name)
    pieces = [*'{}[]":,0123456789.-eEtrufalsn xyzk\\', '"name"', '"age"', '"id"', '"ab"', '"a"', '"k"', "u00e9"]
    pieces += ['"code"', '"tag"', "AB", "Q", '"n"', '"x"', '"big"']
    finished = 0
    for _ in range(400):
        state, text = start, ""
        for _ in range(120):
            for piece in rng.sample(pieces, len(pieces)):
                nxt = state.feed(piece)
                if nxt is not None:
                    break
            else:
                break
            state, text = nxt, text + piece
            if state.complete or (state.can_end and rng.random() < 0.2):
                break
        if not state.can_end:
            continue
        finished += 1
        document = json.loads(text, parse_float=_finite)
        assert validator.is_valid(document), text
        forms = [json.dumps(document, separators=(",", ":"))]
        if name != "enum":  # enum and const values that are arrays or objects are matched compact
            forms += [json.dumps(document), json.dumps(document, indent=1, ensure_ascii=False)]
        for form in forms:
            assert (again := start.feed(form)) is not None and again.can_end, form
    assert finished >= (10 if name in ("pattern", "bounds") else 50), finished  # rarely hit at random


def test_blanks_are_capped() -> None:
    assert feed(PERSON, " ") is None  # the value starts at once
    assert feed(PERSON, "{" + " " * MAX_BLANK_RUN) is not None
    assert feed(PERSON, "{" + " " * (MAX_BLANK_RUN + 1)) is None
    assert feed(PERSON, '{"name": "' + " " * 8) is not None  # inside a string they are text...
    assert feed(PERSON, '{"name": "' + " " * 9) is None  # ...which maxLength counts
    assert feed({"type": "string"}, '"' + " " * 100) is not None


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "number", "multipleOf": 2}, "'multipleOf' is not supported"),
        ({"type": "string", "pattern": "(?=a)"}, "lookaround"),
        ({"type": "string", "pattern": "a{,2}"}, "{0,n}"),
        ({"type": "string", "pattern": 5}, "pattern must be a string"),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "no integer satisfies"),
        ({"type": "array", "prefixItems": [{}], "items": False, "minItems": 2}, "more than the 1 prefixItems"),
        ({"type": "array", "prefixItems": {}}, "prefixItems must be a list"),
        ({"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 2}, "no integer satisfies"),
        ({"type": "number", "minimum": True}, "minimum must be a number"),
        ({"type": "what"}, "unknown type"),
        ({"type": []}, "type must name"),
        ({"$ref": "https://example.com/s.json"}, "only local $ref"),
        ({"$ref": "#/$defs/missing"}, "points at nothing"),
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "contains itself"),
        ({"type": "object", "required": ["x"], "additionalProperties": False}, "is required but"),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "minItems 3 is more than maxItems 2"),
        ({"type": "string", "maxLength": -1}, "maxLength must be"),
        ({"enum": []}, "enum must be"),
        ({"allOf": [{}, {}]}, "allOf"),
        ({"anyOf": [{"type": "string"}], "type": "string"}, "anyOf beside"),
        ({"properties": {"a": False}}, "a schema must be an object or true"),
        ([1], "a schema must be"),
        ("{not json", "not valid JSON"),
        ("x" * (MAX_SCHEMA_CHARS + 1), "at most"),
        ({"enum": ["x" * MAX_SCHEMA_CHARS]}, "at most"),
    ],
)
def test_unsupported_or_bad_schemas_are_refused(schema: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError, match="json_schema") as info:
        SamplingParams(json_schema=schema)
    assert message in str(info.value)


def test_deep_and_odd_schemas_are_refused_not_crashed() -> None:
    deep: dict[str, Any] = {}
    for _ in range(MAX_NESTING + 1):
        deep = {"type": "array", "items": deep}
    with pytest.raises(InvalidRequestError, match="nested"):
        SamplingParams(json_schema=deep)
    with pytest.raises(InvalidRequestError, match="exclude each other"):
        SamplingParams(json_schema={}, json_object=True)
    with pytest.raises(InvalidRequestError, match="surrogate"):
        SamplingParams(json_schema='{"const": "\ud800"}')


def test_schema_travels_as_json_text() -> None:
    params = SamplingParams(json_schema=PERSON)
    assert isinstance(params.json_schema, str) and json.loads(params.json_schema) == PERSON
    again = params_from_wire(params_to_wire(params))
    assert again.json_schema == params.json_schema
    assert params_from_wire(params_to_wire(SamplingParams())).json_schema is None


@pytest.fixture(scope="module")
def llm(model_dirs: dict[str, Path]) -> LLM:
    return LLM(model_dirs["llama"])


OUTPUT_SCHEMAS = ["person", "enum", "array", "nullable", "oneof", "pattern", "bounds", "tuple"]


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 2}, {"top_p": 0.8, "seed": 5}])
def test_outputs_satisfy_the_schema_or_are_its_start(llm: LLM, sampling: dict) -> None:
    prompts = ["Give me JSON", [5, 6, 7], "hello"]
    for name in OUTPUT_SCHEMAS:
        schema = SCHEMAS[name]
        validator = jsonschema_rs.validator_for(schema)
        for out in llm.generate(prompts, SamplingParams(max_tokens=48, json_schema=schema, **sampling)):
            state = feed(schema, out.text)
            assert state is not None, (name, out.text)  # never a token that leaves the schema
            if out.finish_reason == "stop":
                assert state.can_end and validator.is_valid(json.loads(out.text, parse_float=_finite)), out.text
            else:
                assert out.finish_reason == "length" and not state.complete


def test_short_schemas_finish(llm: LLM) -> None:
    """A value with a closing character ends the request as it closes; a number at the top level
    ends when the model samples eos, which the grammar allows once the number is whole."""
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        ({"enum": ["yes", "no"]}, ["yes", "no"]),
        ({"type": "boolean"}, [True, False]),
        ({"const": [1, {"a": None}]}, [[1, {"a": None}]]),
    ]
    for schema, values in cases:
        out = llm.generate(["x"], SamplingParams(max_tokens=64, json_schema=schema, temperature=0.0))[0]
        assert out.finish_reason == "stop" and json.loads(out.text) in values
    eos = llm.tokenizer.eos_token_id
    params = SamplingParams(max_tokens=64, json_schema={"type": "integer"}, temperature=0.0, logit_bias={eos: 30.0})
    out = llm.generate(["x"], params)[0]
    assert out.finish_reason == "stop" and out.token_ids[-1] == eos and isinstance(json.loads(out.text), int)


BOUNDED = [
    {"type": "integer", "minimum": 3, "maximum": 17},
    {"type": "integer", "exclusiveMinimum": -5, "maximum": 250},
    {"type": "number", "minimum": 0, "maximum": 1},
    {"type": "number", "exclusiveMinimum": -2.5, "exclusiveMaximum": 0.25},
    {"type": "integer", "minimum": 100},
    {"type": "number", "maximum": -0.001},
    {"type": "integer", "minimum": -10, "maximum": -10},
    {"type": "number", "minimum": 1e3, "maximum": 1.5e3},
]


@pytest.mark.parametrize("schema", BOUNDED, ids=[json.dumps(s) for s in BOUNDED])
def test_numbers_stay_in_bounds_without_dead_ends(schema: dict[str, Any]) -> None:
    """Random walks over the digits the grammar allows never get stuck and end in range (checked
    by jsonschema_rs); numbers in range are accepted and numbers out of it are not."""
    start = SchemaState.start(compiled_schema(schema_text(schema)))
    validator = jsonschema_rs.validator_for(schema)
    rng = random.Random(json.dumps(schema))
    for _ in range(1500):
        state, text = start, ""
        for _ in range(12):
            options = [c for c in "-0123456789.eE" if state.feed(c) is not None]
            if not options:
                assert state.can_end, ("a dead end", text)
                break
            char = rng.choice(options)
            state, text = state.feed(char), text + char  # type: ignore[assignment]
            if state.can_end and rng.random() < 0.3:
                break
        if state.can_end:
            assert validator.is_valid(json.loads(text)), text
    for _ in range(1500):
        value: float | int = rng.choice([rng.randint(-300, 3000), round(rng.uniform(-3, 3), rng.randint(0, 4))])
        text = json.dumps(value)
        if "e" in text or (schema["type"] == "integer" and not isinstance(value, int)):
            continue  # bounded numbers are written without an exponent; integers without a fraction
        state = start.feed(text)
        assert (state is not None and state.can_end) == validator.is_valid(value), text
