"""Guided choice (vLLM's `choice`): the output is exactly one of some given texts.

The state is the text written so far; a candidate is allowed when some choice goes on with it.
Immutable, like the JSON grammars, and driven the same way by the engine: `can_end` once the
text is one of the choices (eos may come), `complete` once it is one that no other choice
extends (the request ends at once).
"""

from __future__ import annotations

from typing import NamedTuple


class ChoiceState(NamedTuple):
    choices: tuple[str, ...]
    written: str = ""

    @property
    def mask_key(self) -> tuple[object, object]:
        return None, self

    @property
    def can_end(self) -> bool:
        return self.written in self.choices

    @property
    def complete(self) -> bool:
        return self.can_end and not any(len(c) > len(self.written) and c.startswith(self.written) for c in self.choices)

    def feed(self, text: str) -> ChoiceState | None:
        written = self.written + text
        if not any(c.startswith(written) for c in self.choices):
            return None
        return ChoiceState(self.choices, written)
