"""Regular expressions as character-level automata, for `pattern` in JSON schemas and vLLM's
`regex` structured output: a token is allowed while the text stays a prefix of a match.

Python's `re` cannot say whether a text can still become a match, so patterns are compiled here
(Thompson's construction) into an NFA whose state is a frozenset of positions. The syntax is
the common subset of ECMA-262 (JSON Schema's dialect) and Python's: literals, `.`, classes
(`[a-z0-9_]`, `[^...]`, `\\d \\w \\s` and their negations), groups (`(...)`, `(?:...)`),
alternation, `* + ?` and `{n}`, `{n,}`, `{n,m}` (a lazy `?` after them is accepted: it changes
which match a search finds, not which texts match), and `^` / `$` at the ends. Backreferences,
lookaround and other anchors are refused, by name.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from pdserve.errors import InvalidRequestError

MAX_PATTERN_CHARS = 1_000
MAX_STATES = 2_000  # a pattern's NFA, counted after {n,m} copies (each checked character walks them)
MAX_REPEAT = 1_000
UNREACHABLE = 1 << 30

# A character set: (negated, ranges) with inclusive (low, high) code point ranges.
CharSet = tuple[bool, tuple[tuple[int, int], ...]]
_DIGIT = ((48, 57),)
_WORD = ((48, 57), (65, 90), (95, 95), (97, 122))
_SPACE = ((9, 13), (32, 32), (160, 160), (0x2028, 0x2029), (0xFEFF, 0xFEFF))
_CLASSES = {"d": (False, _DIGIT), "D": (True, _DIGIT), "w": (False, _WORD), "W": (True, _WORD)}
_CLASSES |= {"s": (False, _SPACE), "S": (True, _SPACE)}
_ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}
_ANY: CharSet = (True, ((10, 10), (13, 13)))  # '.': anything but a line end


def _overlaps(charset: CharSet, low: int, high: int) -> bool:
    """Whether the set holds some code in [low, high]."""
    negated, ranges = charset
    if not negated:
        return any(a <= high and b >= low for a, b in ranges)
    point = low  # the lowest code in [low, high] the excluded ranges may still cover
    for a, b in sorted(ranges):
        if a > point:
            break
        point = max(point, b + 1)
    return point <= high


def _matches(charset: CharSet, char: str) -> bool:
    negated, ranges = charset
    code = ord(char)
    return any(low <= code <= high for low, high in ranges) != negated


@dataclass(frozen=True, slots=True)
class Regex:
    """The NFA: state i either matches a character (`sets[i]`, then goes to `nexts[i][0]`) or
    moves on without one to each of `nexts[i]` (`sets[i]` None). `accept` has no way out."""

    sets: tuple[CharSet | None, ...]
    nexts: tuple[tuple[int, ...], ...]
    start: frozenset[int]
    accept: int
    # Per state, the fewest characters still to read to reach `accept` (a large number if it
    # cannot): a string with a maxLength must stay where a match still fits.
    remaining: tuple[int, ...] = ()

    def step(self, states: frozenset[int], char: str) -> frozenset[int]:
        moved = [self.nexts[s][0] for s in states if (cs := self.sets[s]) is not None and _matches(cs, char)]
        return _closure(self.sets, self.nexts, moved)

    def feed(self, states: frozenset[int], text: str) -> frozenset[int]:
        for char in text:
            states = self.step(states, char)
            if not states:
                break
        return states

    def accepts(self, states: frozenset[int]) -> bool:
        return self.accept in states

    def can_read_between(self, states: frozenset[int], low: int, high: int, budget: int) -> bool:
        """Whether some character with a code in [low, high] can be read next, with a match at
        most `budget` characters away, that character included (for an escape still being
        written, whose character is not known yet)."""
        return any(
            (charset := self.sets[s]) is not None and self.remaining[s] <= budget and _overlaps(charset, low, high)
            for s in states
        )

    def shortest_rest(self, states: frozenset[int]) -> int:
        """The fewest characters after which the text can be a match."""
        return min((self.remaining[s] for s in states), default=UNREACHABLE)

    def can_go_on(self, states: frozenset[int]) -> bool:
        return any(self.sets[s] is not None for s in states)


def _closure(
    sets: tuple[CharSet | None, ...] | list[CharSet | None],
    nexts: tuple[tuple[int, ...], ...] | list[list[int]],
    states: list[int],
) -> frozenset[int]:
    """The states reachable from `states` without reading a character."""
    seen: set[int] = set()
    todo = list(states)
    while todo:
        state = todo.pop()
        if state in seen:
            continue
        seen.add(state)
        if sets[state] is None:
            todo.extend(nexts[state])
    return frozenset(seen)


def _distances_to(accept: int, sets: Sequence[CharSet | None], nexts: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Fewest characters from each state to `accept`: a breadth-first search backwards, where
    a move without a character costs nothing (0-1 BFS)."""
    back: list[list[int]] = [[] for _ in sets]
    for state, targets in enumerate(nexts):
        for target in targets:
            back[target].append(state)
    distance = [UNREACHABLE] * len(sets)
    distance[accept] = 0
    queue = deque([accept])
    while queue:
        state = queue.popleft()
        for previous in back[state]:
            cost = distance[state] + (0 if sets[previous] is None else 1)
            if cost < distance[previous]:
                distance[previous] = cost
                if sets[previous] is None:
                    queue.appendleft(previous)
                else:
                    queue.append(previous)
    return tuple(distance)


@lru_cache(maxsize=512)
def compile_regex(pattern: str, search: bool = False) -> Regex:
    """The NFA of `pattern`: whole texts that match it, or with `search` (JSON Schema's
    `pattern`), texts that contain a match (unless it is anchored with ^ or $)."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidRequestError(f"regex is {len(pattern)} characters; at most {MAX_PATTERN_CHARS}")
    return _Builder(pattern, search).build()


class _Builder:
    def __init__(self, pattern: str, search: bool) -> None:
        self.pattern = pattern
        self.search = search
        self.pos = 0
        self.sets: list[CharSet | None] = []
        self.nexts: list[list[int]] = []

    def bad(self, message: str) -> InvalidRequestError:
        return InvalidRequestError(f"regex {self.pattern!r} at {self.pos}: {message}")

    def build(self) -> Regex:
        text = self.pattern
        anchored_start, anchored_end = text.startswith("^"), text.endswith("$") and not text.endswith("\\$")
        self.pos = 1 if anchored_start else 0
        end = len(text) - 1 if anchored_end else len(text)
        fragment = self.alternation(end)
        if self.pos != end:
            raise self.bad("unbalanced ')'")
        if self.search and not anchored_start:
            fragment = self.concat(self.star(self.charset_state((True, ()))), fragment)
        if self.search and not anchored_end:
            fragment = self.concat(fragment, self.star(self.charset_state((True, ()))))
        accept = self.new(None)
        self.patch(fragment[1], accept)
        start = _closure(self.sets, self.nexts, [fragment[0]])
        remaining = _distances_to(accept, self.sets, self.nexts)
        return Regex(tuple(self.sets), tuple(tuple(n) for n in self.nexts), start, accept, remaining)

    # A fragment is (entry state, exits): exits are states whose `nexts` get the next entry.
    def new(self, charset: CharSet | None) -> int:
        if len(self.sets) >= MAX_STATES:
            raise self.bad(f"more than {MAX_STATES} automaton states (large {{n,m}} repeats?)")
        self.sets.append(charset)
        self.nexts.append([])
        return len(self.sets) - 1

    def patch(self, exits: list[int], target: int) -> None:
        for state in exits:
            self.nexts[state].append(target)

    def charset_state(self, charset: CharSet) -> tuple[int, list[int]]:
        state = self.new(charset)
        return state, [state]

    def empty(self) -> tuple[int, list[int]]:
        state = self.new(None)
        return state, [state]

    def concat(self, a: tuple[int, list[int]], b: tuple[int, list[int]]) -> tuple[int, list[int]]:
        self.patch(a[1], b[0])
        return a[0], b[1]

    def star(self, a: tuple[int, list[int]]) -> tuple[int, list[int]]:
        split = self.new(None)
        self.nexts[split].append(a[0])
        self.patch(a[1], split)
        return split, [split]

    def alternation(self, end: int) -> tuple[int, list[int]]:
        branches = [self.sequence(end)]
        while self.pos < end and self.pattern[self.pos] == "|":
            self.pos += 1
            branches.append(self.sequence(end))
        if len(branches) == 1:
            return branches[0]
        split = self.new(None)
        exits: list[int] = []
        for entry, out in branches:
            self.nexts[split].append(entry)
            exits += out
        return split, exits

    def sequence(self, end: int) -> tuple[int, list[int]]:
        fragment = self.empty()
        while self.pos < end and self.pattern[self.pos] not in "|)":
            start = self.pos
            atom = self.atom(end)
            fragment = self.concat(fragment, self.quantified(atom, start, end))
        return fragment

    def quantified(self, atom: tuple[int, list[int]], start: int, end: int) -> tuple[int, list[int]]:
        if self.pos >= end or self.pattern[self.pos] not in "*+?{":
            return atom
        char = self.pattern[self.pos]
        if char == "{":
            bounds = self.repeat_bounds(end)
            if bounds is None:  # a literal '{', as in ECMA-262's web grammar and Python
                return atom
            low, high = bounds
        else:
            self.pos += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        if self.pos < end and self.pattern[self.pos] == "?":
            self.pos += 1  # lazy: the same texts match
        if self.pos < end and self.pattern[self.pos] in "*+{":
            raise self.bad("a quantifier on a quantifier")
        return self.repeat(atom, start, low, high)

    def repeat_bounds(self, end: int) -> tuple[int, int | None] | None:
        close = self.pattern.find("}", self.pos, end)
        body = self.pattern[self.pos + 1 : close] if close > 0 else ""
        low_text, comma, high_text = body.partition(",")
        if comma and not low_text and high_text.isdecimal():  # Python reads {,n} as {0,n}, ECMA-262 as text
            raise self.bad("write {0,n}, not {,n}")
        if not low_text.isdecimal() or not (high_text.isdecimal() or high_text == ""):
            return None
        low, high = int(low_text), (int(high_text) if high_text else None) if comma else int(low_text)
        if low > MAX_REPEAT or (high is not None and (high > MAX_REPEAT or high < low)):
            raise self.bad(f"repeat bounds must satisfy 0 <= n <= m <= {MAX_REPEAT}")
        self.pos = close + 1
        return low, high

    def repeat(self, atom: tuple[int, list[int]], start: int, low: int, high: int | None) -> tuple[int, list[int]]:
        """`low` copies of the atom, then one repeated at will (no `high`) or `high - low` optional
        ones; each copy after the first is read again from the pattern, for states of its own."""
        after = self.pos
        total = low + (1 if high is None else high - low)
        fragment = self.empty()
        for i in range(total):
            copy = atom if i == 0 else self.reread(start, after)
            if i < low:
                fragment = self.concat(fragment, copy)
            elif high is None:
                fragment = self.concat(fragment, self.star(copy))
            else:
                skip = self.new(None)
                self.nexts[skip].append(copy[0])
                fragment = self.concat(fragment, (skip, [skip, *copy[1]]))
        self.pos = after
        return fragment

    def reread(self, start: int, after: int) -> tuple[int, list[int]]:
        self.pos = start
        copy = self.atom(after)
        self.pos = after
        return copy

    def atom(self, end: int) -> tuple[int, list[int]]:
        char = self.pattern[self.pos]
        if char == "(":
            self.pos += 1
            if self.pattern.startswith("?:", self.pos):
                self.pos += 2
            elif self.pattern.startswith("?", self.pos):
                raise self.bad("lookaround and named groups are not supported")
            close = self.group_end(self.pos, end)
            inner = self.alternation(close)
            if self.pos != close:
                raise self.bad("unbalanced '('")
            self.pos += 1
            return inner
        if char == "[":
            return self.charset_state(self.bracket(end))
        if char in "*+?":
            raise self.bad(f"nothing to repeat before {char!r}")
        if char in "^$":
            raise self.bad(f"{char!r} is supported only at the pattern's ends")
        self.pos += 1
        if char == ".":
            return self.charset_state(_ANY)
        if char == "\\":
            return self.charset_state(self.escape(end))
        return self.charset_state((False, ((ord(char), ord(char)),)))

    def group_end(self, start: int, end: int) -> int:
        depth, i = 1, start
        while i < end:
            c = self.pattern[i]
            if c == "\\":
                i += 2
                continue
            if c == "[":
                i = self.class_end(i, end)
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    return i
            i += 1
        raise self.bad("unbalanced '('")

    def class_end(self, start: int, end: int) -> int:
        i = start + 1
        if i < end and self.pattern[i] == "^":
            i += 1
        if i < end and self.pattern[i] == "]":
            i += 1
        while i < end and self.pattern[i] != "]":
            i += 2 if self.pattern[i] == "\\" else 1
        if i >= end:
            raise self.bad("unbalanced '['")
        return i

    def escape(self, end: int) -> CharSet:
        if self.pos >= end:
            raise self.bad("a pattern cannot end in a backslash")
        char = self.pattern[self.pos]
        self.pos += 1
        if char in _CLASSES:
            return _CLASSES[char]
        if char in _ESCAPED:
            code = ord(_ESCAPED[char])
            return False, ((code, code),)
        if char == "u":
            digits = self.pattern[self.pos : self.pos + 4]
            if len(digits) != 4 or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.bad("\\u needs four hex digits")
            self.pos += 4
            code = int(digits, 16)
            return False, ((code, code),)
        if char.isalnum():
            raise self.bad(f"\\{char} is not supported")
        return False, ((ord(char), ord(char)),)

    def bracket(self, end: int) -> CharSet:
        close = self.class_end(self.pos, end)
        self.pos += 1
        negated = self.pattern.startswith("^", self.pos)
        if negated:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        while self.pos < close:
            low = self.class_item(close, ranges)
            if low is None:
                continue
            if self.pattern.startswith("-", self.pos) and self.pos + 1 < close:
                self.pos += 1
                high = self.class_item(close, ranges)
                if high is None or high < low:
                    raise self.bad("a bad range in a class")
                ranges.append((low, high))
            else:
                ranges.append((low, low))
        self.pos = close + 1
        return negated, tuple(ranges)

    def class_item(self, close: int, ranges: list[tuple[int, int]]) -> int | None:
        """One character of a class (its code), or None after adding a class escape's ranges."""
        char = self.pattern[self.pos]
        self.pos += 1
        if char != "\\":
            return ord(char)
        escaped = self.pattern[self.pos]
        if escaped in _CLASSES:
            self.pos += 1
            negated, inner = _CLASSES[escaped]
            if negated:
                raise self.bad(f"\\{escaped} inside a class is not supported")
            ranges.extend(inner)
            return None
        charset = self.escape(close)
        return charset[1][0][0]


@dataclass(frozen=True, slots=True)
class RegexState:
    """Guided regex (vLLM's `regex`): the output is a whole match of the pattern."""

    regex: Regex
    states: frozenset[int]

    @classmethod
    def start(cls, pattern: str) -> RegexState:
        regex = compile_regex(pattern)
        return cls(regex, regex.start)

    @property
    def mask_key(self) -> tuple[object, object]:
        return self.regex, (id(self.regex), self.states)

    @property
    def can_end(self) -> bool:
        return self.regex.accepts(self.states)

    @property
    def complete(self) -> bool:
        return self.can_end and not self.regex.can_go_on(self.states)

    def feed(self, text: str) -> RegexState | None:
        states = self.regex.feed(self.states, text)
        return RegexState(self.regex, states) if states else None
