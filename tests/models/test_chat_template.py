"""--chat-template: a file or the template text, checked at start-up (vLLM's rule for telling them apart)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pdserve.errors import ModelLoadError
from pdserve.models.chat_template import load_chat_template

TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_a_file_or_the_text_itself(tmp_path: Path) -> None:
    file = tmp_path / "template.jinja"
    file.write_text(TEMPLATE)
    assert load_chat_template(file) == TEMPLATE
    assert load_chat_template(str(file)) == TEMPLATE
    assert load_chat_template(TEMPLATE) == TEMPLATE
    # transformers' extensions are what templates render with: {% break %} compiles.
    with_break = "{% for m in messages %}{{ m.content }}{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}"
    assert load_chat_template(with_break) == with_break


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("/no/such/template.jinja", ["no such file"]),
        ("chatml", ["no such file"]),  # a bare word is a path, never a template that renders itself
        ("{% for m in messages %}{{ m.content }}", ["syntax error on line 1"]),
        ("{{ messages[0].content }\n", ["syntax error"]),
    ],
)
def test_bad_values_are_refused(value: str, words: list[str]) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_chat_template(value)
    for word in words:
        assert word in str(info.value)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jinja"
    empty.write_text("  \n")
    with pytest.raises(ModelLoadError, match="empty"):
        load_chat_template(empty)
    binary = tmp_path / "binary.jinja"
    binary.write_bytes(b"\xff\xfe{{ x }}")
    with pytest.raises(ModelLoadError, match="UTF-8"):
        load_chat_template(binary)
    broken = tmp_path / "broken.jinja"
    broken.write_text("line one\n{% if x %}\nno end")
    with pytest.raises(ModelLoadError, match="line"):
        load_chat_template(broken)
