"""The `pdserve` command line. Every flag can also be set as PDSERVE_<FLAG> in the environment."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pdserve.errors import PdserveError

ENV_PREFIX = "PDSERVE_"


class EnvDefaultsParser(argparse.ArgumentParser):
    """Fills an option's default from PDSERVE_<DEST> (uppercased) when that variable is set."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and action.dest != "help":
            env = os.environ.get(ENV_PREFIX + action.dest.upper())
            if env is not None:
                if isinstance(action, argparse._StoreTrueAction):
                    action.default = env.lower() in ("1", "true", "yes", "on")
                else:
                    action.default = action.type(env) if callable(action.type) else env
                action.required = False
            if action.help and action.help is not argparse.SUPPRESS:
                action.help += f" [env {ENV_PREFIX}{action.dest.upper()}]"
        return action


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="local Hugging Face model directory (default: built-in tiny)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--block-size", type=int, default=16, help="KV block size in tokens")
    parser.add_argument("--num-kv-blocks", type=int, default=None, help="KV pool size in blocks")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048, help="per-step token budget")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="most sequences per step")


def _generate(args: argparse.Namespace) -> int:
    from pdserve import LLM, SamplingParams

    llm = LLM(
        args.model,
        dtype=args.dtype,
        device=args.device,
        block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
    )
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )
    outputs = llm.generate(list(args.prompts), params, use_tqdm=len(args.prompts) > 1)
    for out in outputs:
        if args.json:
            record = {"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason}
            print(json.dumps(record))
        else:
            print(out.text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = EnvDefaultsParser(prog="pdserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=EnvDefaultsParser)

    gen = sub.add_parser("generate", help="generate text offline for one or more prompts")
    add_model_args(gen)
    gen.add_argument("prompts", nargs="+", help="prompt text")
    gen.add_argument("--max-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--ignore-eos", action="store_true")
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt")
    gen.set_defaults(func=_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PdserveError as exc:
        print(f"pdserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
