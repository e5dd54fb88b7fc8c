"""Streaming detokenization at the router: token ids in, text deltas out.

Workers send token ids only; the text of the whole output comes once, on the finishing chunk,
already cut at a stop string. In between, the router decodes incrementally (vLLM's and TGI's
scheme): each push decodes only a short window of recent tokens, so a long stream costs O(1) per
token rather than re-decoding everything, and the window's leading token supplies the context a
SentencePiece tokenizer needs to keep word-initial spaces.

What is held back, and why the deltas always add up to the non-streaming text:
- a trailing U+FFFD: the last token ended inside a multi-byte character, whose remaining bytes
  are still to come;
- with stop strings, the last (longest stop string - 1) characters: a stop string ends in the
  token that completes it, and the worker finishes on that token, so any text that could still
  become part of a match lies within that tail. Everything before it is final.
On the finishing chunk the rest of the worker's text is sent: by the two rules, what was sent is
a prefix of it.
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger("pdserve.router.detokenizer")

REPLACEMENT_CHAR = "\ufffd"


class StreamDetokenizer:
    def __init__(self, tokenizer: Any, stop: list[str] | None = None, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.holdback = max((len(s) for s in stop or []), default=1) - 1
        self.token_ids: list[int] = []
        self.text = ""  # decoded text of token_ids[:read_offset]
        self.sent = 0  # characters of `text` already handed out
        self._prefix_offset = 0  # the window decoded for context starts here
        self._read_offset = 0  # tokens up to here are in `text`

    def push(self, token_ids: list[int]) -> str:
        """Add generated tokens; return the text that is now safe to send (possibly "")."""
        self.token_ids.extend(token_ids)
        prefix_text = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.token_ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHAR):
            self.text += new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.token_ids)
        safe = max(self.sent, len(self.text) - self.holdback)
        delta = self.text[self.sent : safe]
        self.sent = safe
        return delta

    def finish(self, token_ids: list[int], final_text: str | None) -> str:
        """Add the last tokens and return everything not yet sent of the final text.

        `final_text` is the worker's (cut at a stop string); None means decode the output here.
        """
        self.token_ids.extend(token_ids)
        if final_text is None:
            final_text = self._decode(self.token_ids)
        sent_text = self.text[: self.sent]
        if not final_text.startswith(sent_text):
            # Only a tokenizer whose decode is not prefix-stable can get here; the client has
            # the sent text already, so log the disagreement and send what follows it.
            log.warning("streamed text is not a prefix of the final text", sent=len(sent_text), final=len(final_text))
        self.sent = len(self.text)
        return final_text[len(sent_text) :]

    def _decode(self, token_ids: list[int]) -> str:
        if not token_ids:
            return ""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens)
        return str(text)
