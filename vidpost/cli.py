"""The `vidpost` command: one subcommand per stage or tool, each a module with `main(argv) -> int`.

The stages, numbered the same everywhere: 1 SFT, 2 RL (GRPO), 3 prompt enhancement, 4 inference optimisation.

Every command runs behind one exception boundary (`vidpost.errors.run_main`): a known kind of failure (a bad input,
YAML, a weight file, a full disk, memory) is one `error: ...` line and exit 2.

Subcommands are imported lazily so `vidpost --help` stays fast and a stage's heavy imports load only when used.
"""

from __future__ import annotations

import importlib
import sys
import warnings

from vidpost.errors import run_main

COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("vidpost.pipelines.generate", "sample videos from prompts (mp4 + contact sheet)"),
    "shapes": ("vidpost.pipelines.shapes", "the Shapes world: export clips, verifier statistics"),
    "sft": ("vidpost.pipelines.sft", "stage 1 SFT: flow-matching fine-tuning (LoRA or full)"),
    "precompute": (
        "vidpost.pipelines.precompute",
        "stage 1 SFT: encode VAE latents + text embeddings once for training",
    ),
    "merge-lora": ("vidpost.pipelines.merge_lora", "fold a LoRA into a full diffusers model folder"),
    "shapes-models": ("vidpost.pipelines.shapes_models", "train the Shapes world models from scratch"),
    "shapes-eval": ("vidpost.pipelines.shapes_eval", "verifier success of models on the held-out Shapes prompts"),
    "rl": (
        "vidpost.pipelines.rl",
        "stage 2 RL: GRPO, forward-process methods and reward backprop (`vidpost rl --help` lists the algorithms),"
        " with reward models and a reward-hacking guard",
    ),
    "rl-compare": (
        "vidpost.pipelines.rl_compare",
        "stage 2 RL: every algorithm at one budget of videos on the Shapes world, one table",
    ),
    "grpo-snr": (
        "vidpost.pipelines.grpo_snr",
        "stage 2 RL (GRPO): does a batch carry signal? gradients of independent rollouts",
    ),
    "distill": (
        "vidpost.pipelines.distill",
        "stage 4 inference optimisation: distil a LiT linear-attention student (--method lit) or a few-step,"
        " CFG-free student (--method dmd2)",
    ),
    "distill-eval": (
        "vidpost.pipelines.distill_eval",
        "a few-step student beside its teacher: quality, evaluations and wall time per clip, side by side",
    ),
    "quantize": (
        "vidpost.pipelines.quantize",
        "stage 4d: low-precision linear layers by recipe (FP8, INT8, MXFP8, MXINT8, INT4, NVFP4, MXFP4)",
    ),
    "qat": (
        "vidpost.pipelines.quant_qat",
        "stage 4d: quantisation-aware recovery, a LoRA trained through a recipe's fake quantisation",
    ),
    "quant-eval": ("vidpost.pipelines.quant_eval", "quantisation recipes side by side on the Shapes held-out prompts"),
    "best-of-n": ("vidpost.pipelines.best_of_n", "sample N videos per prompt, keep the best by a reward"),
    "eval": ("vidpost.pipelines.eval", "score videos with reward models; HTML report, --compare"),
    "enhance": (
        "vidpost.pipelines.enhance",
        "stage 3 prompt enhancement: rewrite prompts with a local LLM (zero-shot or trained)",
    ),
    "enhance-train": (
        "vidpost.pipelines.enhance_train",
        "stage 3 prompt enhancement: train a specialised rewriter: sft | grpo",
    ),
    "enhance-eval": (
        "vidpost.pipelines.enhance_eval",
        "stage 3 prompt enhancement: held-out Shapes table, raw prompts vs rewriters vs captions",
    ),
    "run": (
        "vidpost.pipelines.run",
        "the four stages in order: 1 SFT → 2 RL (GRPO) → 3 prompt enhancement → 4 inference optimisation, one report",
    ),
    "demo": ("vidpost.pipelines.demo", "the main job on the embedded default (what `make demo` runs)"),
}


RETIRED: dict[str, str] = {
    "grpo": "`vidpost grpo` is now `vidpost rl` (algorithm: grpo is its default; the same --config works)",
}
"""commands that were folded into others: the one line that says where"""


def usage() -> str:
    lines = ["usage: vidpost <command> [options]", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`vidpost <command> --help` shows a command's options."]
    return "\n".join(lines)


def _one_line_warnings() -> None:
    """Warnings meant for the user (a category with `one_line = True`, e.g. a LoRA on another base) print as one
    `warning: ...` line; every other warning keeps Python's format."""
    default = warnings.showwarning
    if getattr(default, "vidpost", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if getattr(category, "one_line", False):
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    show.vidpost = True
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _one_line_warnings()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name in RETIRED:
        print(f"vidpost: error: {RETIRED[name]}", file=sys.stderr)
        return 2
    if name not in COMMANDS:
        print(f"vidpost: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return run_main(module.main, rest)


if __name__ == "__main__":
    raise SystemExit(main())
