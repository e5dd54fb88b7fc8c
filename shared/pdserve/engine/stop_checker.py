"""Decides when a request is done: eos, stop token ids, stop strings, max_tokens, context."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from pdserve.engine.sequence import Sequence


class StopChecker:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: tuple[int, ...], max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = max_model_len

    def check(self, seq: Sequence) -> str | None:
        """Finish reason after the sequence's latest token, or None to keep going."""
        p = seq.params
        token = seq.token_ids[-1]
        if (not p.ignore_eos and token in self.eos_token_ids) or token in p.stop_token_ids:
            return "stop"
        if p.stop and self._match_stop_string(seq):
            return "stop"
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _match_stop_string(self, seq: Sequence) -> bool:
        p = seq.params
        # A token is at least one byte and a character at most four, so a stop string that
        # ends in the newest token lies within this window: decode the whole output only then.
        window = 4 * max(len(s) for s in p.stop) + 4
        tail = self._decode(seq.output_token_ids[-window:])
        if not any(s in tail for s in p.stop):
            return False
        text = self._decode(seq.output_token_ids)
        hits = [(text.find(s), s) for s in p.stop if s in text]
        position, stop = min(hits)
        seq.stop_text = text[: position + len(stop)] if p.include_stop_str_in_output else text[:position]
        return True

    def final_text(self, seq: Sequence) -> str:
        if seq.stop_text is not None:
            return seq.stop_text
        return self._decode(seq.output_token_ids)

    def _decode(self, token_ids: list[int]) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        assert isinstance(text, str)
        return text
