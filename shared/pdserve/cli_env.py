"""Flags from the environment: every `pdserve` flag can be set as PDSERVE_<FLAG>.

A value from the environment is checked as strictly as the same value on the command line (its
type, its choices, a switch's spelling), and a bad one stops the command with an argparse error
that names the variable: a typo in a compose file or a systemd unit must not become a traceback,
a silently ignored switch, or a default the operator never chose. A command-line flag still wins
over the environment. Options that take several values (`--goodput ttft:500 tpot:50`, a repeated
`--target`) read them shell-split from the one variable.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

ENV_PREFIX = "PDSERVE_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def env_name(action: argparse.Action) -> str:
    return ENV_PREFIX + action.dest.upper()


def _convert(action: argparse.Action, text: str) -> Any:
    value: Any = text
    if callable(action.type):
        try:
            value = action.type(text)
        except argparse.ArgumentTypeError as e:
            raise ValueError(str(e)) from None
        except (TypeError, ValueError):
            kind = getattr(action.type, "__name__", repr(action.type))
            raise ValueError(f"invalid {kind} value {text!r}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"invalid choice {value!r} (choose from {', '.join(map(str, action.choices))})")
    return value


def env_value(action: argparse.Action, raw: str) -> Any:
    """The default `action` takes from the environment string `raw`; ValueError says why not."""
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError(f"expected one of {', '.join(TRUE_WORDS)} or {', '.join(w for w in FALSE_WORDS if w)}")
    several = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if not several:
        return _convert(action, raw)
    try:
        words = shlex.split(raw)
    except ValueError as e:  # an unclosed quote
        raise ValueError(f"cannot split it into values ({e})") from None
    if not words and (action.nargs == "+" or action.required):
        raise ValueError("expected at least one value")
    return [_convert(action, word) for word in words]


class EnvDefaultsParser(argparse.ArgumentParser):
    """Fills an option's default from PDSERVE_<DEST> (uppercased) when that variable is set; a
    bad value is reported when this parser parses, so only the command being run complains."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.env_errors: list[str] = []  # before super().__init__, which adds -h
        self.env_appends: list[argparse.Action] = []
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and action.dest != "help":
            name = env_name(action)
            raw = os.environ.get(name)
            if raw is not None:
                try:
                    action.default = env_value(action, raw)
                    action.required = False
                    if isinstance(action, argparse._AppendAction):
                        self.env_appends.append(action)
                except ValueError as e:
                    self.env_errors.append(f"environment variable {name}={raw!r}: {e}")
            if action.help and action.help is not argparse.SUPPRESS:
                action.help += f" [env {name}]"
        return action

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.env_errors:
            self.error("; ".join(self.env_errors))
        # argparse appends a repeated option's values to its default; given on the command line,
        # they replace the environment's instead, as every other flag does.
        given = list(args) if args is not None else sys.argv[1:]
        overridden = [
            action
            for action in self.env_appends
            if any(arg == opt or arg.startswith(opt + "=") for arg in given for opt in action.option_strings)
        ]
        saved = [action.default for action in overridden]
        for action in overridden:
            action.default = None
        try:
            return super().parse_known_args(args, namespace)
        finally:
            for action, default in zip(overridden, saved, strict=True):
                action.default = default
