"""Streaming text that holds markup tags (`<tool_call>`, `[TOOL_CALLS]`, `</think>`): a tag may
arrive split across chunks, so the text that could still become one is held back."""

from __future__ import annotations


def tag_start_at_end(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper start of `tag` (0: none)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
