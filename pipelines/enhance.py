"""`vidpost enhance`: rewrite prompts with a local LLM (zero-shot, or a trained rewriter folder).

    vidpost enhance "a cat"                                    # default enhancer: SmolLM2-135M-Instruct
    vidpost enhance "a cat" "a dog surfing" --enhancer /models/Qwen2.5-3B-Instruct --device cuda
    vidpost enhance --file prompts.txt --json > rewrites.jsonl
    vidpost enhance "a cat" --enhancer model.Q4_K_M.gguf --sample --temperature 0.8 --seed 1

Prints one rewrite per line on stdout (the original prompt where a rewrite fell back, with a warning on stderr),
or with --json one JSON object per prompt: text, original, fallback_reason, cached, raw. Exit code 2 for user
mistakes (a missing enhancer, an empty prompt, an unknown setting).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vidpost.config import ArgumentParser
from vidpost.enhance.prompts import TARGETS


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="vidpost enhance", description=__doc__.split("\n\n")[0])
    p.add_argument("prompts", nargs="*", help="prompts to rewrite")
    p.add_argument("--file", type=Path, help="text file, one prompt per line (blank lines and # skipped)")
    p.add_argument(
        "--enhancer", help="causal LM folder (with a chat template) or .gguf file; default: SmolLM2-135M-Instruct"
    )
    p.add_argument("--config", type=Path, help="YAML of rewriter settings (system_prompt, few_shot, max_words, ...)")
    p.add_argument("--target", choices=TARGETS, help="system prompt set: text-to-video or image-to-video")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--max-words", type=int, help="longer rewrites fall back to the original prompt")
    p.add_argument("--repetition-penalty", type=float, help="penalty on repeated tokens (default 1.1; 1.0: off)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the rewrite cache")
    p.add_argument("--cache-dir", type=Path, help="folder of the rewrite cache (default: the user cache)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt instead of plain text")
    return p


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = [p.strip() for p in args.prompts]
    if args.file is not None:
        if not args.file.exists():
            raise ValueError(f"prompts file {args.file} does not exist")
        lines = args.file.read_text().splitlines()
        prompts += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts or any(not p for p in prompts):
        raise ValueError("no prompts given (pass prompts as arguments or --file; empty prompts are not allowed)")
    return prompts


def overrides(args: argparse.Namespace) -> dict:
    """Rewriter settings given on the command line (those not given keep the config's / the defaults)."""
    o = {
        "target": args.target,
        "max_new_tokens": args.max_new_tokens,
        "max_words": args.max_words,
        "repetition_penalty": args.repetition_penalty,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "batch_size": args.batch_size,
    }
    o = {k: v for k, v in o.items() if v is not None}
    return o | ({"do_sample": True} if args.sample else {})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from vidpost.enhance import Rewriter, RewriterConfig

        prompts = read_prompts(args)
        config = RewriterConfig.from_yaml(args.config) if args.config else None  # None: the folder's rewriter.yaml
        rewriter = Rewriter.from_pretrained(
            args.enhancer,
            config=config,
            cache_dir=args.cache_dir,
            use_cache=not args.no_cache,
            device=args.device,
            **overrides(args),
        )
        results = rewriter.rewrite(prompts, progress=True)
    except (ValueError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        if args.json:
            print(json.dumps(r.to_dict(), ensure_ascii=False))
        else:
            print(r.text)
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
