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
    "eval": ("vidpost.pipelines.eval", "score videos or a model's with reward models; HTML report, --compare"),
    "compare": (
        "vidpost.pipelines.compare",
        "models, students, quantisation recipes and prompt rewriters side by side on the Shapes held-out scenes",
    ),
    "sft": ("vidpost.pipelines.sft", "stage 1: flow-matching fine-tuning (LoRA or full); sft precompute"),
    "rl": (
        "vidpost.pipelines.rl",
        "stage 2: RL with reward models and a reward-hacking guard (`vidpost rl --help` lists the algorithms);"
        " rl snr, rl compare",
    ),
    "enhance": (
        "vidpost.pipelines.enhance",
        "stage 3: rewrite prompts with a local LLM (zero-shot or trained); enhance train sft|grpo, enhance eval",
    ),
    "distill": (
        "vidpost.pipelines.distill",
        "stage 4: distil a LiT linear-attention student (--method lit) or a few-step, CFG-free student"
        " (--method dmd2); distill eval",
    ),
    "quantize": (
        "vidpost.pipelines.quantize",
        "stage 4: low-precision linear layers by recipe (FP8, INT8, MXFP8, MXINT8, INT4, NVFP4, MXFP4); quantize eval",
    ),
    "qat": (
        "vidpost.pipelines.quant_qat",
        "stage 4: quantisation-aware recovery, a LoRA trained through a recipe's fake quantisation",
    ),
    "merge-lora": ("vidpost.pipelines.merge_lora", "fold a LoRA into a full diffusers model folder"),
    "best-of-n": ("vidpost.pipelines.best_of_n", "sample N videos per prompt, keep the best by a reward"),
    "shapes": (
        "vidpost.pipelines.shapes",
        "the Shapes world: export clips, verifier statistics, ceiling, headroom; shapes models, shapes eval",
    ),
    "run": (
        "vidpost.pipelines.run",
        "the four stages in order: 1 SFT → 2 RL → 3 prompt enhancement → 4 inference optimisation, one report",
    ),
    "demo": ("vidpost.pipelines.demo", "the main job on the embedded default (what `make demo` runs)"),
}

SUBCOMMANDS: dict[str, dict[str, str]] = {
    "sft": {"precompute": "vidpost.pipelines.precompute"},
    "rl": {"snr": "vidpost.pipelines.grpo_snr", "compare": "vidpost.pipelines.rl_compare"},
    "enhance": {"train": "vidpost.pipelines.enhance_train", "eval": "vidpost.pipelines.enhance_eval"},
    "distill": {"eval": "vidpost.pipelines.distill_eval"},
    "quantize": {"eval": "vidpost.pipelines.quant_eval"},
    "shapes": {"models": "vidpost.pipelines.shapes_models", "eval": "vidpost.pipelines.shapes_eval"},
}
"""`vidpost <command> <sub> ...`: the commands grouped under a stage (the first word after the command picks one)"""

RENAMED = {
    "precompute": "sft precompute",
    "grpo-snr": "rl snr",
    "rl-compare": "rl compare",
    "enhance-train": "enhance train",
    "enhance-eval": "enhance eval",
    "distill-eval": "distill eval",
    "quant-eval": "quantize eval",
    "shapes-models": "shapes models",
    "shapes-eval": "shapes eval",
}
RETIRED: dict[str, str] = {
    "grpo": "`vidpost grpo` is now `vidpost rl` (algorithm: grpo is its default; the same --config works)",
    **{old: f"`vidpost {old}` is now `vidpost {new}` (the same arguments)" for old, new in RENAMED.items()},
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
    module_name = COMMANDS[name][0]
    sub = SUBCOMMANDS.get(name, {})
    if rest and rest[0] in sub:
        module_name, rest = sub[rest[0]], rest[1:]
    module = importlib.import_module(module_name)
    return run_main(module.main, rest)


if __name__ == "__main__":
    raise SystemExit(main())
