"""`vidpost quantize`: low-precision linear layers for a model, by recipe (`vidpost.models.quant`).

    vidpost quantize --model shapes --recipe configs/quant/w8a8-fp8.yaml --out runs/quant/shapes-w8a8-fp8
    python generate.py --model runs/quant/shapes-w8a8-fp8 --prompt "a red circle moves to the right"

Loads the model (a preset, a folder or `folder+lora`: the LoRA is fused first), replaces the recipe's linear layers,
calibrates on the recipe's prompts when it needs to (static activation scales, SmoothQuant), and writes the
quantised model folder, which `vidpost.models.load` (hence `generate.py --model`, the evaluation commands and the
staged run) loads with the recipe applied. Prints which layers were quantised, on which path (reference or
torchao), and the packed weight bytes against bf16.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vidpost.config import ArgumentParser
from vidpost.training.runner import ExitCode


def resolve_keep_worst(adapter: Any, model_dir: Path, recipe: Any) -> list[str]:
    """Mixed precision by sensitivity: add the recipe's `keep_worst` most sensitive layers (measured on the
    unquantised `adapter` over the calibration prompts, among the layers not kept already) to `recipe.keep`; → those
    layers' names. (A saved folder's `quant.json` holds the resolved `keep`; loading it does not measure again.)"""
    from vidpost.evaluation.prompts import load_prompt_pool
    from vidpost.evaluation.settings import resolve_settings
    from vidpost.models.quant import layer_sensitivity

    if not recipe.keep_worst:
        return []
    cal = recipe.calibration
    prompts = load_prompt_pool(cal.prompts, cal.count)[: min(cal.count, 4)]
    size = {"num_frames": cal.num_frames, "height": cal.height, "width": cal.width}
    settings = resolve_settings(model_dir, adapter, steps=cal.steps, **size)
    errors = layer_sensitivity(adapter, recipe, prompts, settings, seed=cal.seed)
    worst = sorted(errors, key=errors.get, reverse=True)[: recipe.keep_worst]
    recipe.keep = [*recipe.keep, *worst]
    return worst


def calibrate_recipe(adapter: Any, model_dir: Path, recipe: Any) -> None:
    """Calibrate the installed recipe on its calibration prompts, when it needs to (static scales, SmoothQuant)."""
    from vidpost.evaluation.prompts import load_prompt_pool
    from vidpost.evaluation.settings import resolve_settings
    from vidpost.models.quant import calibrate

    if not recipe.needs_calibration():
        return
    cal = recipe.calibration
    prompts = load_prompt_pool(cal.prompts, cal.count)[: cal.count]
    size = {"num_frames": cal.num_frames, "height": cal.height, "width": cal.width}
    calibrate(adapter, recipe, prompts, resolve_settings(model_dir, adapter, steps=cal.steps, **size))


def quantize_model(spec: str, recipe_path: str | Path, out: str | Path | None = None, device: str = "cpu") -> Any:
    """Load `spec`, apply and calibrate the recipe; write the folder when `out` is given → (adapter, report)."""
    from vidpost.evaluation.shapes import parse_model
    from vidpost.models import load, resolve_model_path
    from vidpost.models.quant import install_quant, read_recipe, save_quant_folder, use_kernels

    recipe = read_recipe(recipe_path)
    base, lora = parse_model(spec)
    path = resolve_model_path(base)
    adapter = load(path, device=device, lora=lora)
    if lora:
        adapter.transformer.fuse_lora()
        adapter.transformer.unload_lora()
    resolve_keep_worst(adapter, path, recipe)
    report = install_quant(adapter, recipe, kernels=False)
    calibrate_recipe(adapter, path, recipe)
    if out is not None:  # the folder keeps the full-precision weights: written before torchao converts them
        save_quant_folder(adapter, recipe, report, out, source=spec)
    use_kernels(adapter, recipe, report)
    return adapter, report


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes", help="a preset, a model folder, or folder+lora")
    p.add_argument("--recipe", required=True, help="a recipe YAML (configs/quant/*.yaml)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        _, report = quantize_model(args.model, args.recipe, args.out, args.device)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    paths = sorted(set(report.backend_used.values()))
    print(
        f"{report.recipe}: {len(report.layers)} linear layers ({', '.join(paths)}); transformer weights "
        f"{report.weight_bytes / 1e6:.2f} MB packed vs {report.bf16_bytes / 1e6:.2f} MB bf16 ({report.ratio:.2f}×); "
        f"written to {args.out}",
        file=sys.stderr,
    )
    return ExitCode.OK


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
