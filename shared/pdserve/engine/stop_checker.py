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
        if seq.grammar is not None and seq.grammar.complete:
            return "stop"  # the grammar (JSON mode, a schema, a choice, a regex) allows nothing more
        if seq.num_output_tokens < p.min_tokens:  # nothing but the context's end stops it yet
            return "length" if seq.num_tokens >= self.max_model_len else None
        if (not p.ignore_eos and token in self.eos_token_ids) or token in p.stop_token_ids:
            # vLLM's stop_reason: the stop token id, but None for eos (checked first, as vLLM does).
            seq.stop_reason = None if not p.ignore_eos and token in self.eos_token_ids else token
            if not p.include_stop_str_in_output:
                # vLLM's rule: the token that stopped the sequence stays in token_ids but not in
                # the text (it shows with skip_special_tokens=False, or when it is no special token).
                seq.stop_text = self._decode(seq.output_token_ids[:-1], p.skip_special_tokens)
            return "stop"
        if p.stop and self._match_stop_string(seq):
            return "stop"
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def suppressed(self, seq: Sequence) -> list[int]:
        """Token ids the sequence may not sample next: its stop tokens while under min_tokens."""
        p = seq.params
        if seq.num_output_tokens >= p.min_tokens:
            return []
        return sorted({*p.stop_token_ids, *(() if p.ignore_eos else self.eos_token_ids)})

    def _match_stop_string(self, seq: Sequence) -> bool:
        p = seq.params
        # A token is at least one byte and a character at most four, so a stop string that
        # ends in the newest token lies within this window: decode the whole output only then.
        window = 4 * max(len(s) for s in p.stop) + 4
        tail = self._decode(seq.output_token_ids[-window:], p.skip_special_tokens)
        if not any(s in tail for s in p.stop):
            return False
        text = self._decode(seq.output_token_ids, p.skip_special_tokens)
        # Under min_tokens no stop string could match; past it, only a match that ends in the
        # text after the first min_tokens - 1 tokens counts (an earlier one was let through).
        shielded = 0
        if p.min_tokens > 1:
            shielded = len(self._decode(seq.output_token_ids[: p.min_tokens - 1], p.skip_special_tokens))
        hits = [(position, s) for s in p.stop if (position := text.find(s, max(0, shielded - len(s) + 1))) >= 0]
        if not hits:
            return False
        position, stop = min(hits)
        seq.stop_reason = stop
        seq.stop_text = text[: position + len(stop)] if p.include_stop_str_in_output else text[:position]
        return True

    def final_text(self, seq: Sequence) -> str:
        if seq.stop_text is not None:
            return seq.stop_text
        return self._decode(seq.output_token_ids, seq.params.skip_special_tokens)

    def _decode(self, token_ids: list[int], skip_special_tokens: bool) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
        assert isinstance(text, str)
        return text
