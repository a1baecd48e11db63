"""Stage 3 — prompt enhancement: training a specialised prompt rewriter, the command line of its steps.

    vidpost enhance train data --out data/enhance/shapes-pairs.jsonl --n 2000 --paraphrases 1
    vidpost enhance train sft  --config configs/shapes/enhance-sft.yaml  [dotted.overrides=...] [--resume latest]
    vidpost enhance train grpo --config configs/shapes/enhance-grpo.yaml [dotted.overrides=...] [--resume latest]
    vidpost enhance "crimson ball sliding right" --enhancer runs/shapes-enhance-grpo/final

`data` writes the Shapes pairs file (training scenes only: {prompt, target, reward_prompt});
`sft` (`vidpost.pipelines.enhance_sft`) fine-tunes the rewriter on (short prompt → target prompt) pairs;
`grpo` (`vidpost.pipelines.enhance_grpo`) then trains it with GRPO against the rewards of the videos the frozen video
model renders from its rewrites. Each module's docstring states its algorithm. Both steps write `final/`, a model
folder `Rewriter.from_pretrained` loads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vidpost.config import ArgumentParser
from vidpost.pipelines.enhance_grpo import EnhanceGRPOConfig, train_grpo
from vidpost.pipelines.enhance_sft import EnhanceSFTConfig, train_sft
from vidpost.training.runner import ExitCode, add_stage_arguments, parse_stage_args, run_stage

__all__ = ["STAGES", "EnhanceGRPOConfig", "EnhanceSFTConfig", "build_parser", "main", "train_grpo", "train_sft"]

STAGES = {"sft": (EnhanceSFTConfig, train_sft), "grpo": (EnhanceGRPOConfig, train_grpo)}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="vidpost enhance train", description="Train a specialised prompt rewriter.")
    sub = p.add_subparsers(dest="stage", required=True)
    for name, help_ in (
        ("sft", "supervised fine-tuning on {prompt, target} pairs (LoRA or full)"),
        ("grpo", "GRPO against the frozen video model's rewards + intent preservation + a length penalty"),
    ):
        add_stage_arguments(sub.add_parser(name, help=help_), f"configs/shapes/enhance-{name}.yaml")
    d = sub.add_parser("data", help="write the Shapes pairs file (train scenes only): prompt, target, reward_prompt")
    d.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    d.add_argument("--n", type=int, default=2000, help="training scenes")
    d.add_argument("--paraphrases", type=int, default=1, help="extra user-style paraphrases per scene")
    d.add_argument("--seed", type=int, default=0, help="training stream of the Shapes split")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_stage_args(build_parser(), argv)
    if args.stage == "data":
        from vidpost.enhance.train import shapes_pairs, write_pairs

        try:
            rows = shapes_pairs(args.n, paraphrases=args.paraphrases, seed=args.seed)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return ExitCode.BAD_INPUT
        print(f"wrote {len(rows)} pairs to {write_pairs(rows, args.out)}", file=sys.stderr)
        return ExitCode.OK
    code, result = run_stage(*STAGES[args.stage], args)
    if result is not None:
        print(f"done: {result.steps} steps; rewriter in {result.final}", file=sys.stderr)
    return code


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
