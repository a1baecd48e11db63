"""`vidpost quantize eval`: quantisation recipes side by side on the Shapes held-out prompts, one run.

    vidpost quantize eval --model shapes --recipes configs/quant/*.yaml [--seeds 2] [--out results/shapes-quant]

Row 1 is the unquantised model; then one row per recipe (applied and calibrated in this process, as `vidpost
quantize` does). Every row samples the same prompts from the same noises (the evaluation core's seeding), so the
deltas are paired and PSNR compares each clip with the unquantised model's clip from the same noise. Columns:
verifier success (95% Wilson), graded score (95% t), the paired graded delta (95% t), PSNR vs unquantised (dB, mean
over clips), temporal consistency, packed transformer weight bytes and their ratio to bf16, the path the layers ran
(reference fake quantisation or torchao's kernels) and the sampler's seconds per clip. Written: `table.md`,
`results.json`. `--sensitivity R...`: each recipe's per-layer sensitivity (`layer_sensitivity`: the velocity error
with one layer quantised at a time, on the model's own trajectories for train prompts), by layer type, in
`sensitivity.md`, `sensitivity.json` and `sensitivity.png`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from vidpost.config import ArgumentParser
from vidpost.outputs import write_text
from vidpost.training.runner import ExitCode


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def evaluate_recipes(
    model: str, recipes: list[str], items: list[dict[str, Any]], seeds: int, batch_size: int
) -> list[dict[str, Any]]:
    from vidpost.evaluation.settings import resolve_settings
    from vidpost.evaluation.shapes import parse_model, score_row
    from vidpost.models import load, resolve_model_path
    from vidpost.models.quant import QUANT_CONFIG
    from vidpost.pipelines.quantize import quantize_model
    from vidpost.rewards.base import build_reward

    temporal = build_reward("temporal")
    base, lora = parse_model(model)
    path = resolve_model_path(base)
    reference: dict[tuple[int, int], torch.Tensor] = {}
    rows = []
    for recipe in [None, *recipes]:
        if recipe is None:
            adapter, report = load(path, lora=lora), None
        elif Path(recipe).is_dir():  # a quantised model folder (`vidpost quantize`, `vidpost qat`): as it loads
            adapter = load(recipe)
            report = adapter.quant_report
            if report is None:
                raise ValueError(f"{recipe} is a model folder without {QUANT_CONFIG}: not a quantised model")
            report.recipe = f"{report.recipe} ({recipe})"
        else:
            adapter, report = quantize_model(model, recipe)
        settings = resolve_settings(path, adapter)
        psnrs: list[float] = []

        def on_batch(k: int, idx: list[int], videos: torch.Tensor, psnrs=psnrs, first=recipe is None) -> None:
            for j, i in enumerate(idx):
                if first:
                    reference[(k, i)] = videos[j].clone()
                else:
                    psnrs.append(_psnr(videos[j], reference[(k, i)]))

        row: dict[str, Any] = {"recipe": "unquantised" if recipe is None else report.recipe}
        row |= score_row(
            adapter, settings, items, seeds=seeds, batch_size=batch_size, temporal=temporal, on_batch=on_batch
        )
        row["psnr"] = psnrs
        if report is None:
            n = sum(p.numel() for p in adapter.transformer.parameters())
            row |= {"weight_bytes": 2.0 * n, "ratio": 1.0, "path": "—", "layers": 0}
        else:
            row |= {"weight_bytes": report.weight_bytes, "ratio": report.ratio, "layers": len(report.layers)}
            row["path"] = ", ".join(sorted(set(report.backend_used.values())))
        row["ratio_wan_1_3b"] = wan_ratio(report)
        row.pop("videos", None)
        rows.append(row)
        print(_line(row, rows[0]), file=sys.stderr)
    return rows


def wan_ratio(report: Any, arch: str = "wan2.1-t2v-1.3b") -> float:
    """The packed-to-bf16 ratio of `report`'s recipe on the real architecture's transformer (computed on meta tensors;
    the layers the recipe keeps by name are kept there too)."""
    from vidpost.models.architectures import meta_transformer
    from vidpost.models.quant import packed_bytes

    if report is None:
        return 1.0
    packed, bf16 = packed_bytes(meta_transformer(arch), report.spec)
    return packed / bf16


def _line(row: dict[str, Any], ref: dict[str, Any]) -> str:
    from vidpost.evaluation.stats import paired_cells

    c = paired_cells(row, ref)
    psnr = "—" if row is ref else f"{sum(row['psnr']) / len(row['psnr']):.1f}"
    n = len(row["success"])
    return (
        f"| {row['recipe']} | {c['success']} | {c['graded']} | {c['delta']} | {psnr} | {sum(row['temporal']) / n:.4f} | "
        f"{row['weight_bytes'] / 1e6:.2f} MB ({row['ratio']:.2f}×) | {row['ratio_wan_1_3b']:.3f}× | {row['path']} | "
        f"{row['seconds'] / n:.3f} |"
    )


def markdown(rows: list[dict[str, Any]], model: str, n_prompts: int, seeds: int) -> str:
    lines = [
        f"Model `{model}`; {len(rows[0]['success'])} held-out clips ({n_prompts} prompts × {seeds} seeds, the same "
        "noises in every row). Weight bytes: the transformer packed (quantised layers at their format's bits plus "
        "scales, the rest at 16 bits), computed; ratio to bf16; the same recipe on the Wan2.1-T2V-1.3B transformer's "
        "architecture (computed from its shapes; its blocks are 98% of its weights, the Shapes model's 89%).",
        "",
        "| recipe | success (95% CI) | graded (95% CI) | Δ graded vs unquantised (95% CI) | PSNR vs unquantised (dB) "
        "| temporal | transformer weights | Wan2.1-1.3B transformer vs bf16 (computed) | path | s / clip |",
        "|---|---|---|---|---:|---:|---|---:|---|---:|",
    ]
    return "\n".join(lines + [_line(r, rows[0]) for r in rows])


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
        "--recipes",
        nargs="+",
        required=True,
        help="recipe YAMLs (configs/quant/*.yaml) applied to --model, or quantised model folders (vidpost quantize, qat)",
    )
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--limit", type=int, help="the first N held-out prompts (default: all 64)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, default=Path("outputs/quant-eval"))
    p.add_argument("--sensitivity", nargs="*", default=[], help="recipes whose per-layer sensitivity to report")
    p.add_argument("--sensitivity-prompts", type=int, default=4, help="train prompts of the sensitivity states")
    args = p.parse_args(argv)
    from vidpost.shapes.splits import heldout_prompts

    if args.threads:
        torch.set_num_threads(args.threads)
    items = heldout_prompts()
    items = items[: args.limit] if args.limit else items
    try:
        rows = evaluate_recipes(args.model, args.recipes, items, args.seeds, args.batch_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, args.model, len(items), args.seeds)
    if args.sensitivity:
        from vidpost.evaluation.prompts import load_prompt_pool

        prompts = load_prompt_pool("shapes-train", args.sensitivity_prompts)[: args.sensitivity_prompts]
        sens = sensitivity_report(args.model, args.sensitivity, prompts, args.out)
        write_text(args.out / "sensitivity.md", sens + "\n")
        table += "\n\nPer-layer sensitivity (relative velocity error, one layer quantised at a time):\n\n" + sens
    write_text(args.out / "table.md", table + "\n")
    write_text(args.out / "results.json", json.dumps({"model": args.model, "rows": rows}, indent=1) + "\n")
    print(table)
    return ExitCode.OK


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
