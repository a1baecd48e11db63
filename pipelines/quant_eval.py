"""`vidpost quantize eval`: quantisation recipes side by side on the Shapes held-out prompts, one run.

    vidpost quantize eval --model shapes --recipes configs/quant/*.yaml [--seeds 2] [--out results/shapes-quant]

Row 1 is the unquantised model; then one row per recipe (applied and calibrated in this process, as `vidpost
quantize` does). Every row samples the same prompts from the same noises (the evaluation core's seeding), so the
deltas are paired and PSNR compares each clip with the unquantised model's clip from the same noise. Columns:
verifier success (95% Wilson), graded score (95% t), the paired graded delta (95% t), PSNR vs unquantised (dB, mean
over clips), temporal consistency, packed transformer weight bytes and their ratio to bf16, the path the layers ran
(reference fake quantisation or torchao's kernels) and the sampler's seconds per clip. Written: `table.md`,
`results.json` (`vidpost compare MODEL MODEL@quant=RECIPE ... --columns temporal quant`). `--sensitivity R...`: each
recipe's per-layer sensitivity (`layer_sensitivity`: the velocity error with one layer quantised at a time, on the
model's own trajectories for train prompts), by layer type, in `sensitivity.md`, `sensitivity.json` and
`sensitivity.png`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from vidpost.config import ArgumentParser
from vidpost.evaluation.compare import RowSpec
from vidpost.outputs import write_text
from vidpost.pipelines.compare import add_common_arguments, run_compare
from vidpost.training.runner import ExitCode


def sensitivity_report(model: str, recipes: list[str], prompts: list[str], out: Path) -> str:
    """Per-layer output error of each recipe (`vidpost.models.quant.layer_sensitivity`) → markdown by layer type;
    writes `sensitivity.json` and `sensitivity.png` (one panel per recipe, a bar per layer in module order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vidpost.evaluation.settings import resolve_settings
    from vidpost.evaluation.shapes import parse_model
    from vidpost.models import load, resolve_model_path
    from vidpost.models.quant import LAYER_TYPES, layer_sensitivity, layer_type, read_recipe

    base, lora = parse_model(model)
    path = resolve_model_path(base)
    adapter = load(path, lora=lora)
    settings = resolve_settings(path, adapter)
    results = {}
    for r in recipes:
        recipe = read_recipe(r)
        results[recipe.name] = layer_sensitivity(adapter, recipe, prompts, settings)
        print(f"sensitivity: {recipe.name} done", file=sys.stderr)
    write_text(out / "sensitivity.json", json.dumps(results, indent=1) + "\n")
    kinds = list(dict.fromkeys(k for _, k in LAYER_TYPES)) + ["other"]
    colours = {k: plt.cm.tab20(i % 20) for i, k in enumerate(kinds)}
    fig, axes = plt.subplots(len(results), 1, figsize=(12, 2.6 * len(results)), squeeze=False)
    for ax, (name, errs) in zip(axes[:, 0], results.items()):
        layers = list(errs)
        ax.bar(range(len(layers)), [errs[n] for n in layers], color=[colours[layer_type(n)] for n in layers])
        ax.set_title(f"{name}: relative velocity error with one layer quantised", fontsize=9)
        ax.set_yscale("log")
        ax.set_xticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in kinds if any(
        layer_type(n) == k for errs in results.values() for n in errs)]  # fmt: skip
    labels = [k for k in kinds if any(layer_type(n) == k for errs in results.values() for n in errs)]
    axes[0, 0].legend(handles, labels, fontsize=7, ncol=4, loc="upper right")
    axes[-1, 0].set_xlabel(f"linear layers of `{model}` in module order")
    fig.tight_layout()
    fig.savefig(out / "sensitivity.png", dpi=110)
    plt.close(fig)
    head = "| layer type | " + " | ".join(f"{n}: mean / max" for n in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for k in labels:
        cells = []
        for errs in results.values():
            v = [e for n, e in errs.items() if layer_type(n) == k]
            cells.append(f"{sum(v) / len(v):.4f} / {max(v):.4f}" if v else "—")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost quantize eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes")
    p.add_argument(
        "--recipes", nargs="+", required=True, help="recipe YAMLs (applied here) and/or quantised model folders"
    )
    p.add_argument("--sensitivity", nargs="*", default=[], help="recipes whose per-layer sensitivity to report")
    p.add_argument("--sensitivity-prompts", type=int, default=4, help="train prompts of the sensitivity states")
    add_common_arguments(p, "outputs/quant-eval")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [RowSpec(args.model, label="unquantised")]
    rows += [
        RowSpec(r) if Path(r).is_dir() else RowSpec(args.model, quant=r, label=Path(r).stem) for r in args.recipes
    ]
    about = (
        f"Model `{args.model}`. Weight bytes: the transformer packed (quantised layers at their format's bits plus "
        "scales, the rest at 16 bits), computed; ratio to bf16; the same recipe on the Wan2.1-T2V-1.3B transformer's "
        "architecture (computed from its shapes; its blocks are 98% of its weights, the Shapes model's 89%)."
    )
    _, table = run_compare(
        rows, columns=("temporal", "quant"), seeds=args.seeds, limit=args.limit, batch_size=args.batch_size,
        out=args.out, about=about,
    )  # fmt: skip
    if args.sensitivity:
        from vidpost.evaluation.prompts import load_prompt_pool

        prompts = load_prompt_pool("shapes-train", args.sensitivity_prompts)[: args.sensitivity_prompts]
        sens = sensitivity_report(args.model, args.sensitivity, prompts, args.out)
        write_text(args.out / "sensitivity.md", sens + "\n")
        table += "\n\nPer-layer sensitivity (relative velocity error, one layer quantised at a time):\n\n" + sens
        write_text(args.out / "table.md", table + "\n")
        print(sens)
    return ExitCode.OK


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
