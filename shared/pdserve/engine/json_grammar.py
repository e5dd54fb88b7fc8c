"""JSON mode (`response_format: {"type": "json_object"}`): which next tokens keep the output a
prefix of one JSON object.

A character-level pushdown automaton over the output text: its state is an immutable tuple, so
trying a candidate token is feeding the token's text to the current state, and a token that
would break the JSON yields None. The output must be one object (OpenAI's json_object); once it
is closed, only whitespace (and then the end) may follow. Runs of whitespace outside strings are
capped, so a model that would rather not write JSON cannot stall in blanks until max_tokens.
"""

from __future__ import annotations

from typing import NamedTuple

MAX_BLANK_RUN = 16  # consecutive whitespace characters allowed outside strings
_BLANK = " \t\n\r"
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
_ESCAPES = '"\\/bfnrtu'
_HEX = "0123456789abcdefABCDEF"
_DIGITS = "0123456789"

# modes
START, VALUE, FIRST_VALUE, FIRST_KEY, KEY, COLON, AFTER, STRING, NUMBER, LITERAL, DONE = range(11)
# number sub-states: after '-', after a leading 0, in int digits, after '.', in fraction, after
# e/E, after the exponent sign, in exponent digits
N_SIGN, N_ZERO, N_INT, N_DOT, N_FRAC, N_EXP, N_EXP_SIGN, N_EXP_DIGITS = range(8)
_NUMBER_ENDS = frozenset({N_ZERO, N_INT, N_FRAC, N_EXP_DIGITS})


class JsonState(NamedTuple):
    mode: int = START
    stack: str = ""  # open containers, innermost last: "{" or "["
    aux: int = 0  # STRING: 1 if a key; NUMBER: its sub-state
    escape: int = 0  # STRING: 0 none, 1 after a backslash, 2-5 hex digits of \\u still due
    literal: str = ""  # LITERAL: the characters still due
    blanks: int = 0  # consecutive whitespace outside strings

    @property
    def complete(self) -> bool:
        return self.mode == DONE

    @property
    def can_end(self) -> bool:
        """The output may end here (eos may be sampled): for an object, once it is closed."""
        return self.mode == DONE

    @property
    def ends_value(self) -> bool:
        """A standalone value (see `start_value`) is whole here but may go on: a number."""
        return self.mode == NUMBER and self.aux in _NUMBER_ENDS and not self.stack

    def step(self, char: str) -> JsonState | None:
        return _step(self, char)

    @property
    def mask_key(self) -> tuple[object, object]:
        """What decides the tokens allowed here (for caching them), and an object to keep alive
        while the key is in use (see GrammarConstraint)."""
        return None, self

    def feed(self, text: str) -> JsonState | None:
        """The state after `text`, or None if `text` cannot continue a JSON object here."""
        state: JsonState | None = self
        for char in text:
            state = _step(state, char)  # type: ignore[arg-type]
            if state is None:
                return None
        return state


def start_value(char: str) -> JsonState | None:
    """A JSON value of any type that starts with `char`, standing alone: the state is DONE once
    the value is whole (a number, which has no closing character, stays open: see `ends_value`)."""
    return _value_start("", char)


def _step(s: JsonState, c: str) -> JsonState | None:
    mode = s.mode
    if mode == STRING:
        return _string_step(s, c)
    if mode == NUMBER:
        nxt = _number_step(s.aux, c)
        if nxt is not None:
            return s._replace(aux=nxt)
        if s.aux not in _NUMBER_ENDS:
            return None
        return _step(_after_value(s.stack), c)  # the number ended; `c` comes after it
    if mode == LITERAL:
        if c != s.literal[0]:
            return None
        rest = s.literal[1:]
        return _after_value(s.stack) if not rest else s._replace(literal=rest)
    if c in _BLANK:
        return None if s.blanks >= MAX_BLANK_RUN else s._replace(blanks=s.blanks + 1)
    s = s._replace(blanks=0)
    if mode == START:
        return JsonState(FIRST_KEY, "{") if c == "{" else None
    if mode == DONE:
        return None
    if mode in (FIRST_KEY, KEY):
        if c == '"':
            return JsonState(STRING, s.stack, aux=1)
        if c == "}" and mode == FIRST_KEY:
            return _close(s.stack)
        return None
    if mode == COLON:
        return JsonState(VALUE, s.stack) if c == ":" else None
    if mode in (VALUE, FIRST_VALUE):
        if c == "]" and mode == FIRST_VALUE:
            return _close(s.stack)
        return _value_start(s.stack, c)
    if mode == AFTER:
        top = s.stack[-1]
        if c == ",":
            return JsonState(KEY if top == "{" else VALUE, s.stack)
        if (c == "}" and top == "{") or (c == "]" and top == "["):
            return _close(s.stack)
        return None
    return None


def _value_start(stack: str, c: str) -> JsonState | None:
    if c == "{":
        return JsonState(FIRST_KEY, stack + "{")
    if c == "[":
        return JsonState(FIRST_VALUE, stack + "[")
    if c == '"':
        return JsonState(STRING, stack, aux=0)
    if c == "-":
        return JsonState(NUMBER, stack, aux=N_SIGN)
    if c in _DIGITS:
        return JsonState(NUMBER, stack, aux=N_ZERO if c == "0" else N_INT)
    if c in _LITERALS:
        return JsonState(LITERAL, stack, literal=_LITERALS[c])
    return None


def _string_step(s: JsonState, c: str) -> JsonState | None:
    if s.escape == 1:
        if c not in _ESCAPES:
            return None
        return s._replace(escape=5 if c == "u" else 0)
    if s.escape >= 2:
        if c not in _HEX:
            return None
        return s._replace(escape=s.escape - 1 if s.escape > 2 else 0)
    if c == "\\":
        return s._replace(escape=1)
    if c == '"':
        return JsonState(COLON, s.stack) if s.aux == 1 else _after_value(s.stack)
    if c < " ":
        return None  # control characters must be escaped
    return s


def number_start(char: str) -> int | None:
    """The number sub-state after a number's first character, None if it cannot start one."""
    if char == "-":
        return N_SIGN
    if char in _DIGITS:
        return N_ZERO if char == "0" else N_INT
    return None


def number_step(sub: int, char: str, integer: bool = False) -> int | None:
    """The number sub-state after `char`, None if the number cannot go on with it (an integer
    takes no fraction or exponent)."""
    if integer and char in ".eE":
        return None
    return _number_step(sub, char)


def number_may_end(sub: int) -> bool:
    return sub in _NUMBER_ENDS


def _number_step(sub: int, c: str) -> int | None:
    if c in _DIGITS:
        if sub == N_SIGN:
            return N_ZERO if c == "0" else N_INT
        if sub in (N_INT, N_FRAC, N_EXP_DIGITS):
            return sub
        if sub == N_DOT:
            return N_FRAC
        if sub in (N_EXP, N_EXP_SIGN):
            return N_EXP_DIGITS
        return None  # after a leading zero
    if c == "." and sub in (N_ZERO, N_INT):
        return N_DOT
    if c in "eE" and sub in (N_ZERO, N_INT, N_FRAC):
        return N_EXP
    if c in "+-" and sub == N_EXP:
        return N_EXP_SIGN
    return None


def _after_value(stack: str) -> JsonState:
    return JsonState(AFTER, stack) if stack else JsonState(DONE)


def _close(stack: str) -> JsonState:
    return _after_value(stack[:-1])
