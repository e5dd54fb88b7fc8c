"""A chat template given by the operator (vLLM's `--chat-template`): a file, or the template itself.

Base models ship no template, and some instruct models ship one that an operator wants to
replace; the template then comes from the command line. Like vLLM, the value is read as a file
when one exists at that path, as the template itself when it holds Jinja's characters, and is
otherwise a path that does not exist: a clear error rather than a template that renders the
path's text. The template is parsed at start-up, so a syntax error stops the service with its
line number instead of failing every chat request.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from pdserve.errors import ModelLoadError

# A value holding any of these is a template, not a path.
_TEMPLATE_CHARS = frozenset("{}\n")
# Far above any real template (the largest shipped ones are a few tens of kB).
MAX_TEMPLATE_BYTES = 1 << 20


def load_chat_template(value: str | Path) -> str:
    """The template text of `value` (a file path or the template itself), parsed once to check it."""
    text = str(value)
    path = Path(text).expanduser()
    if not _TEMPLATE_CHARS & set(text) or path.is_file():
        if not path.is_file():
            raise ModelLoadError(
                f"--chat-template {text}: no such file (pass a template file, or the template text itself)"
            )
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise ModelLoadError(f"--chat-template {text}: larger than {MAX_TEMPLATE_BYTES} bytes")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"--chat-template {path}: cannot be read as UTF-8 text ({e})") from e
    check_chat_template(text)
    return text


def check_chat_template(template: str) -> None:
    """ModelLoadError with the line number if `template` is not valid Jinja."""
    if not template.strip():
        raise ModelLoadError("--chat-template is empty")
    try:
        _compile(template)
    except jinja2.TemplateSyntaxError as e:
        raise ModelLoadError(f"--chat-template: Jinja syntax error on line {e.lineno}: {e.message}") from e


def _compile(template: str) -> None:
    """Compile as transformers will render it: its extensions ({% break %}, {% generation %})
    and filters. Its compiler is private, so a Jinja parse with loop controls stands in where
    a transformers release no longer has it."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
        return
    _compile_jinja_template(template)
