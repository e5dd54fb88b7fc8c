"""`text_offset` indexes the completion text, which leaves special tokens out."""

from __future__ import annotations

from pdserve.models import builtin_model_path
from pdserve.services.router.logprobs import completion_logprobs, next_text_offset
from transformers import AutoTokenizer


def test_special_tokens_take_no_characters_of_the_text() -> None:
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path(), local_files_only=True)
    plain = tokenizer.encode("ab", add_special_tokens=False)
    special = tokenizer.all_special_ids[0]
    ids = [plain[0], special, *plain[1:], special]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    logprobs = completion_logprobs(tokenizer, ids, [-0.5] * len(ids), offset=0)
    assert logprobs.tokens[1] == tokenizer.decode([special])  # still listed, by its own text
    assert text == "ab"
    assert logprobs.text_offset == [0, 1, 1, 2]
    assert all(offset <= len(text) for offset in logprobs.text_offset)
    assert next_text_offset(tokenizer, ids, logprobs) == len(text)
    # A stream's next chunk continues where the text stands, not past it.
    more = completion_logprobs(tokenizer, plain[:1], [-0.1], offset=next_text_offset(tokenizer, ids, logprobs))
    assert more.text_offset == [2]
