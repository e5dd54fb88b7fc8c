"""What grammar checks cost on a real-sized vocabulary (the built-in model has 261 tokens).

Trains a byte-level BPE tokenizer of `--vocab` tokens on Python source found on this machine
(the project's and its installed packages'), then times, for JSON mode and a JSON schema:

- every token's text and first character, found once per engine;
- the worst case of one constrained row: the most likely tokens hold nothing the grammar allows,
  so the best allowed token of the whole vocabulary is needed (`best_allowed`): by checking
  every token in order of likelihood (before), and through `GrammarConstraint.allowed_mask`,
  the first time a state comes up (the mask is built) and later (the mask is cached);
- the common case: the first candidate is allowed (a model that writes the format anyway).

    python ops/bench_grammar_vocab.py [--vocab 32000] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch
from pdserve.engine.grammar_constraint import GrammarConstraint, MaskCache
from pdserve.engine.json_grammar import JsonState
from pdserve.engine.json_schema import compiled_schema, schema_text
from pdserve.engine.sampler import best_allowed
from pdserve.engine.schema_grammar import SchemaState
from pdserve.engine.token_texts import TokenTexts
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def train_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    sources = sorted(ROOT.glob("*/pdserve/**/*.py")) + sorted(Path(sysconfig.get_paths()["purelib"]).glob("**/*.py"))
    files = [str(p) for p in sources[:6000]]
    print(f"training a {vocab}-token BPE on {len(files)} source files", flush=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    bpe.train(files, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000, help="tokenizer vocabulary size (default 32000)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each timing (default 5)")
    args = parser.parse_args()
    if args.vocab < 1000 or args.reps < 1:
        parser.error("--vocab must be at least 1000 and --reps at least 1")
    tokenizer = train_tokenizer(args.vocab)
    vocab = len(tokenizer)
    print(f"vocabulary: {vocab} tokens", flush=True)

    texts = TokenTexts(tokenizer)
    started = time.perf_counter()
    texts.first_chars(vocab)  # every token's text, once per engine
    print(f"token texts and first characters of the whole vocabulary: {(time.perf_counter() - started) * 1000:.0f} ms")

    # States where few tokens are allowed: after a key's colon (a value must start) and inside
    # an integer (digits, ',' or '}').
    states = {
        "json_object": JsonState().feed('{"name": "x", "age":'),
        "json_schema": SchemaState.start(compiled_schema(schema_text(SCHEMA))).feed('{"name": "x", "age": 4'),
    }
    generator = torch.Generator().manual_seed(0)
    for name, state in states.items():
        assert state is not None

        plain = GrammarConstraint(state, texts, frozenset(), vocab)

        def allowed(token: int, plain: GrammarConstraint = plain) -> bool:
            return plain(token)  # the same check, without the first-character mask

        allowed_ids = [t for t in range(vocab) if allowed(t)]
        worst, first_time, cached, common = [], [], [], []
        for _ in range(args.reps):
            logits = torch.randn(vocab, generator=generator)
            logits[allowed_ids] -= 100.0  # every allowed token ranks below every refused one
            started = time.perf_counter()
            expected = best_allowed(logits, allowed)
            worst.append(time.perf_counter() - started)
            cache = MaskCache(vocab)  # a state not seen before: its mask is built
            started = time.perf_counter()
            assert best_allowed(logits, GrammarConstraint(state, texts, frozenset(), vocab, cache)) == expected
            first_time.append(time.perf_counter() - started)
            started = time.perf_counter()  # the same state at a later step: the mask is cached
            assert best_allowed(logits, GrammarConstraint(state, texts, frozenset(), vocab, cache)) == expected
            cached.append(time.perf_counter() - started)
            logits[allowed_ids[0]] = 100.0  # now the most likely token is allowed
            started = time.perf_counter()
            best_allowed(logits, GrammarConstraint(state, texts, frozenset(), vocab, cache))
            common.append(time.perf_counter() - started)
        timings = (("w", worst), ("f", first_time), ("c", cached), ("o", common))
        ms = {k: statistics.median(v) * 1000 for k, v in timings}
        print(
            f"{name}: {len(allowed_ids)} of {vocab} tokens allowed; a row past its likely tokens: every token "
            f"checked {ms['w']:.1f} ms, mask built {ms['f']:.1f} ms, mask cached {ms['c']:.2f} ms; "
            f"first candidate allowed {ms['o']:.3f} ms"
        )


if __name__ == "__main__":
    sys.exit(main())
