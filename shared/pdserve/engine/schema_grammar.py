"""Structured output: which next tokens keep the output a prefix of a JSON value that a schema
accepts (the schema compiled by `json_schema`).

A character-level pushdown automaton run nondeterministically: the state is a small set of
configurations, each a stack of immutable frames (innermost last) and a count of blanks, so an
`anyOf`, two property names sharing a prefix, or a number that may end or go on are all followed
at once until a character decides between them. A value that may end (a number, a literal that
is a prefix of another) forks eagerly into "it ended" and "it goes on". Trying a candidate token
is feeding its text to the state; a token no configuration survives yields None.
"""

from __future__ import annotations

from pdserve.engine.json_grammar import (
    MAX_BLANK_RUN,
    JsonState,
    number_may_end,
    number_start,
    number_step,
    start_value,
)
from pdserve.engine.json_schema import (
    ANY,
    ANY_OBJECT,
    ARRAY,
    INTEGER,
    LITERALS,
    NUMBER,
    OBJECT,
    STRING,
    UNBOUNDED,
    UNION,
    CompiledSchema,
    Node,
)
from pdserve.engine.number_bounds import Bounds

MAX_DEPTH = 64  # open containers (a recursive schema would otherwise nest without bound)
# Alternatives followed at once (a "required" call over 128 tools follows 128 until the name
# decides); past it the latest are dropped, which keeps outputs valid.
MAX_CONFIGS = 1024
_BLANK = " \t\n\r"
_ESCAPES = '"\\/bfnrtu'
_HEX = "0123456789abcdefABCDEF"
_UNESCAPED = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}

# frame tags, and what follows the tag in the frame tuple
T_VALUE = 0  # (T_VALUE, node): a value of `node` is due
T_ANY = 1  # (T_ANY, JsonState): inside a value of any shape
T_KEY = 2  # (T_KEY, node, seen, first): a key is due; first: right after '{', where '}' may close
T_LISTED_KEY = 3  # (T_LISTED_KEY, node, seen, typed): inside a listed key, `typed` written so far
T_OTHER_KEY = 4  # (T_OTHER_KEY, node, seen, typed, escape): inside a key of the object's other properties
T_COLON = 5  # (T_COLON, node, seen, value): the colon is due, then a value of node `value`
T_AFTER_PROPERTY = 6  # (T_AFTER_PROPERTY, node, seen): after a property's value: ',' or '}'
T_ITEMS = 7  # (T_ITEMS, node, count): after '[' (count 0) or after item number `count`
# (T_STRING, node, length, escape, regex states, code): inside a string, `length` characters in;
# with a pattern, the regex's states after the characters so far, and a \u escape's code so far
T_STRING = 8
# (T_NUMBER, integer, sub, node, text): inside a number (json_grammar's sub-states); with bounds,
# the node (else -1) and the number's text so far (else "", so that states repeat)
T_NUMBER = 9
T_LITERAL = 10  # (T_LITERAL, suffixes): inside one of some literals (enum values): what each still needs
_BETWEEN_TOKENS = frozenset({T_VALUE, T_KEY, T_COLON, T_AFTER_PROPERTY, T_ITEMS})

Frames = tuple[tuple, ...]  # tagged tuples, as above
Config = tuple[Frames, int]  # frames, and blanks in a row


class SchemaState:
    """Where the output is in the schema's grammar; immutable, like JsonState."""

    __slots__ = ("configs", "schema")

    def __init__(self, schema: CompiledSchema, configs: tuple[Config, ...]) -> None:
        self.schema = schema
        self.configs = configs

    @classmethod
    def start(cls, schema: CompiledSchema) -> SchemaState:
        # The value starts at the first character: no blanks ahead of it (as if a full run of
        # them were behind), so a streamed reply, tool-call arguments included, opens with it.
        return cls(schema, ((((T_VALUE, schema.root),), MAX_BLANK_RUN),))

    @property
    def mask_key(self) -> tuple[object, object]:
        # The schema by identity: the key holds the schema, so no other takes its id meanwhile.
        return self.schema, (id(self.schema), self.configs)

    @property
    def complete(self) -> bool:
        """The value is whole and nothing but blanks could follow: the request is done."""
        return all(not frames for frames, _ in self.configs)

    @property
    def can_end(self) -> bool:
        """The value may be whole here (a number may also go on): eos may be sampled."""
        return any(not frames for frames, _ in self.configs)

    def feed(self, text: str) -> SchemaState | None:
        """The state after `text`, or None if `text` cannot continue a value the schema accepts."""
        nodes = self.schema.nodes
        configs = self.configs
        for char in text:
            out: list[Config] = []
            for frames, blanks in configs:
                _step(nodes, frames, blanks, char, out)
            if not out:
                return None
            configs = tuple(dict.fromkeys(out))[:MAX_CONFIGS] if len(out) > 1 else (out[0],)
        return SchemaState(self.schema, configs)


def _step(nodes: tuple[Node, ...], frames: Frames, blanks: int, c: str, out: list[Config]) -> None:
    if not frames:
        if c in _BLANK and blanks < MAX_BLANK_RUN:
            out.append((frames, blanks + 1))
        return
    top = frames[-1]
    tag = top[0]
    rest = frames[:-1]
    if tag not in _BETWEEN_TOKENS:
        _inside_token(nodes, top, rest, c, out)
    elif c in _BLANK:
        if blanks < MAX_BLANK_RUN:
            out.append((frames, blanks + 1))
    elif tag == T_VALUE:
        _start(nodes, top[1], rest, c, out)
    elif tag == T_KEY:
        node, seen = nodes[top[1]], top[2]
        if c == '"':
            if any(not seen >> i & 1 for i in range(len(node.keys))):
                out.append(((*rest, (T_LISTED_KEY, top[1], seen, "")), 0))
            if node.extra >= 0:
                out.append(((*rest, (T_OTHER_KEY, top[1], seen, "", 0)), 0))
        elif c == "}" and top[3] and not node.required & ~seen:
            out.append((rest, 0))
    elif tag == T_COLON:
        if c == ":":
            out.append(((*rest, (T_AFTER_PROPERTY, top[1], top[2]), (T_VALUE, top[3])), 0))
    elif tag == T_AFTER_PROPERTY:
        node, seen = nodes[top[1]], top[2]
        if c == ",":
            if node.extra >= 0 or any(not seen >> i & 1 for i in range(len(node.keys))):
                out.append(((*rest, (T_KEY, top[1], seen, False)), 0))
        elif c == "}" and not node.required & ~seen:
            out.append((rest, 0))
    else:  # T_ITEMS
        node, count = nodes[top[1]], top[2]
        if c == "]":
            if count >= node.low:
                out.append((rest, 0))
        elif count == 0:
            if node.high > 0:
                _start(nodes, _item(node, 0), (*rest, (T_ITEMS, top[1], 1)), c, out)
        elif c == "," and count < node.high:
            item = _item(node, count)
            # Without maxItems the count matters only up to minItems and past prefixItems (and
            # "not the first item"): counting no further lets states repeat, so their allowed
            # tokens are cached.
            if node.high < UNBOUNDED:
                count += 1
            else:
                count = min(count + 1, max(node.low, len(node.values), 1))
            out.append(((*rest, (T_ITEMS, top[1], count), (T_VALUE, item)), 0))


def _item(node: Node, index: int) -> int:
    """The node of an array's item at `index`: its prefixItems entry, or its items schema."""
    return node.values[index] if index < len(node.values) else node.extra


def _inside_token(nodes: tuple[Node, ...], top: tuple, rest: Frames, c: str, out: list[Config]) -> None:
    tag = top[0]
    if tag == T_STRING:
        _string_step(nodes[top[1]], top, rest, c, out)
    elif tag == T_NUMBER:
        sub = number_step(top[2], c, top[1])
        if sub is None:  # a character that ends the number went to the fork that ended it
            return
        bounds = nodes[top[3]].bounds if top[3] >= 0 else None
        text = top[4] + c if bounds is not None else ""
        if bounds is not None and (c in "eE" or not bounds.reachable(text, top[1])):
            return  # bounded numbers have no exponent, and stay where a number in bounds can follow
        _push_number(rest, top[1], sub, out, top[3], text, bounds)
    elif tag == T_LITERAL:
        suffixes = tuple(s[1:] for s in top[1] if s[0] == c)
        if suffixes:
            _push_literal(rest, suffixes, out)
    elif tag == T_ANY:
        state: JsonState = top[1]
        nxt = state.step(c)
        if nxt is not None and not (nxt.complete and state.ends_value):  # likewise for a number
            if nxt.complete:
                out.append((rest, 0))
            else:
                _push_generic(rest, nxt, out)
    elif tag == T_LISTED_KEY:
        node, seen, typed = nodes[top[1]], top[2], top[3] + c
        more = False
        for i, key in enumerate(node.keys):
            if seen >> i & 1 or not key.startswith(typed):
                continue
            if key == typed:  # the key's closing quote: this property is the one being written
                out.append(((*rest, (T_COLON, top[1], seen | 1 << i, node.values[i])), 0))
            else:
                more = True
        if more:
            out.append(((*rest, (T_LISTED_KEY, top[1], seen, typed)), 0))
    else:  # T_OTHER_KEY: a key of the other properties, which may not be one of the listed keys
        node, typed, escape = nodes[top[1]], top[3] + c, top[4]
        if escape == 1:
            if c in _ESCAPES:
                out.append(((*rest, (T_OTHER_KEY, top[1], top[2], typed, 5 if c == "u" else 0)), 0))
        elif escape >= 2:
            if c in _HEX:
                out.append(((*rest, (T_OTHER_KEY, top[1], top[2], typed, escape - 1 if escape > 2 else 0)), 0))
        elif c == '"':
            if typed not in node.keys:
                out.append(((*rest, (T_COLON, top[1], top[2], node.extra)), 0))
        elif c >= " ":
            out.append(((*rest, (T_OTHER_KEY, top[1], top[2], typed, 1 if c == "\\" else 0)), 0))


def _string_step(node: Node, top: tuple, rest: Frames, c: str, out: list[Config]) -> None:
    """A character inside a string: JSON's escapes, the length bounds, and the pattern, which
    reads the string's characters (an escape's, once it is whole)."""
    _, index, length, escape, states, code = top
    regex = node.regex
    char = None  # the string character `c` completes, if any
    if escape == 1:
        if c not in _ESCAPES:
            return
        if c == "u":
            out.append(((*rest, (T_STRING, index, length, 5, states, 0)), 0))
            return
        char, escape = _UNESCAPED[c], 0
    elif escape >= 2:
        if c not in _HEX:
            return
        code = code * 16 + int(c, 16)
        if escape > 2:
            # The code's leading digits so far: its character lies in a range the pattern must allow.
            span = 16 ** (escape - 2)
            low, budget = code * span, node.high - length + 1
            if regex is not None and not regex.can_read_between(states, low, low + span - 1, budget):
                return
            out.append(((*rest, (T_STRING, index, length, escape - 1, states, code)), 0))
            return
        char, escape = chr(code), 0
    elif c == '"':
        if length >= node.low and (regex is None or regex.accepts(states)):
            out.append((rest, 0))
        return
    elif c < " " or length >= node.high:  # control characters must be escaped
        return
    elif c == "\\":  # an escape counts as one character, at its backslash
        if regex is None or regex.can_read_between(states, 0, 0xFFFF, node.high - length):
            out.append(((*rest, (T_STRING, index, length + 1, 1, states, 0)), 0))
        return
    else:
        # Without bounds or a pattern the length does not matter: not counting it lets states repeat.
        char, length = c, length + 1 if (node.high < UNBOUNDED or node.low or regex is not None) else 0
    if regex is not None:
        states = regex.step(states, char)
        # A match must still fit in maxLength, or the string could neither go on nor close.
        if not states or length + regex.shortest_rest(states) > node.high:
            return
    out.append(((*rest, (T_STRING, index, length, escape, states, 0)), 0))


def _start(nodes: tuple[Node, ...], index: int, rest: Frames, c: str, out: list[Config]) -> None:
    """A value of node `index` begins with `c` (not a blank); `rest` is what encloses it."""
    if len(rest) >= MAX_DEPTH:
        return
    node = nodes[index]
    kind = node.kind
    if kind == UNION:  # compile refused unions that reach themselves, so this ends
        for option in node.options:
            _start(nodes, option, rest, c, out)
    elif kind == ANY or (kind == ANY_OBJECT and c == "{"):
        state = start_value(c)
        if state is not None:
            _push_generic(rest, state, out)
    elif kind == OBJECT:
        if c == "{":
            out.append(((*rest, (T_KEY, index, 0, True)), 0))
    elif kind == ARRAY:
        if c == "[":
            out.append(((*rest, (T_ITEMS, index, 0)), 0))
    elif kind == STRING:
        if c == '"':
            regex = node.regex
            out.append(((*rest, (T_STRING, index, 0, 0, None if regex is None else regex.start, 0)), 0))
    elif kind in (NUMBER, INTEGER):
        sub = number_start(c)
        bounds = node.bounds
        if sub is not None and (bounds is None or bounds.reachable(c, kind == INTEGER)):
            bounded = bounds is not None
            _push_number(rest, kind == INTEGER, sub, out, index if bounded else -1, c if bounded else "", bounds)
    elif kind == LITERALS:
        suffixes = tuple(t[1:] for t in node.literals if t[0] == c)
        if suffixes:
            _push_literal(rest, suffixes, out)


def _push_number(
    rest: Frames,
    integer: bool,
    sub: int,
    out: list[Config],
    index: int = -1,
    text: str = "",
    bounds: Bounds | None = None,
) -> None:
    out.append(((*rest, (T_NUMBER, integer, sub, index, text)), 0))
    if number_may_end(sub) and (bounds is None or bounds.allows_end(text)):
        out.append((rest, 0))


def _push_literal(rest: Frames, suffixes: tuple[str, ...], out: list[Config]) -> None:
    left = tuple(s for s in suffixes if s)
    if left:
        out.append(((*rest, (T_LITERAL, left)), 0))
    if len(left) < len(suffixes):  # one literal is whole
        out.append((rest, 0))


def _push_generic(rest: Frames, state: JsonState, out: list[Config]) -> None:
    out.append(((*rest, (T_ANY, state)), 0))
    if state.ends_value:
        out.append((rest, 0))
