"""The byte-level tokenizer of pdserve's built-in and random test models.

Token ids 0..255 are the bytes 0..255, so any text round-trips (decode(encode(s)) == s) and
token counts are easy to predict: one token per UTF-8 byte. Special tokens follow the bytes.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
# Ids are assigned in this order right after the 256 byte tokens: 256, 257, 258, 259, 260.
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IM_START_TOKEN, IM_END_TOKEN)
BYTE_TOKENS = 256

# ChatML. Content may be a string or a list of OpenAI-style parts, of which only text parts are
# rendered. No BOS: the template, like the tokenizer, adds nothing the caller did not write.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level tokenizer: 256 byte tokens, then the SPECIAL_TOKENS, and the ChatML template.

    bos is <|begin_of_text|> (256), eos <|end_of_text|> (257), pad <|pad|> (258). Encoding adds no
    BOS or any other token, so a prompt of n UTF-8 bytes is exactly n tokens. Special-token text
    inside a prompt is encoded as the special token, as Hugging Face tokenizers do.
    """
    byte_to_char = _gpt2_byte_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(BYTE_TOKENS)}
    # A BPE model with no merges maps each ByteLevel character, i.e. each byte, to its own id.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def _gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the one tokenizers' ByteLevel pre-tokenizer uses."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(BYTE_TOKENS) if b not in table]
    table.update({b: chr(BYTE_TOKENS + i) for i, b in enumerate(others)})
    return table
