"""One denoising step of the Wan2.1-T2V-1.3B architecture (random weights) with low-precision linear layers, side by
side: bf16 against W8A8 INT8 and W8A8 FP8 through torchao's kernels, and FP8 W8A8 plus our FP8 attention (an
all-FP8 step).

    python benchmarks/quant_step.py --device cuda [--frames 21] [--repeats 5] [--out benchmarks/quant_step.md]
    python benchmarks/quant_step.py --device cpu --layers 1 --frames 1 --height 8 --width 8   (a smoke run)

The transformer is diffusers' `WanTransformer3DModel` at the 1.3B configuration (`models/architectures.py`, its own
random initialisation, `--layers` to shorten it), called through the Wan adapter on a 480p latent grid (`--frames`
latent frames of 60 × 104; 21 = 81 frames: 32,760 tokens) with 512 text tokens: one transformer pass, no CFG.
Variants are copies of one model converted by `vidpost.models.quant.install_quant` with `backend: torchao`
(`w8a8-int8`; `w8a8-fp8` with torchao's float8 dynamic config, GPU only) and, for the last row, attention
"fp8_sparse" on every video self-attention layer (dense schedule: FP8 Q/K/P·V, no block skipping). Each repeat
runs every variant once in turn after a warm-up round; reported: the median seconds and the speed-up over bf16.
Rows a device cannot run say why. Random weights: speed only, not quality (the Shapes table measures quality).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(args: argparse.Namespace):
    from diffusers import WanTransformer3DModel

    from vidpost.models import WanAdapter
    from vidpost.models.architectures import WAN_COMMON, WAN_TRANSFORMERS

    torch.manual_seed(0)
    config = {**WAN_COMMON, **WAN_TRANSFORMERS["wan2.1-t2v-1.3b"]}
    if args.layers:
        config["num_layers"] = args.layers
    transformer = WanTransformer3DModel(**config).to(args.device, torch.bfloat16).eval().requires_grad_(False)
    adapter = WanAdapter.tiny(seed=0)
    adapter.transformer = transformer
    return adapter


def variants(base, device: str) -> dict[str, object]:
    """name → adapter (or the reason it cannot run here)."""
    from vidpost.models.attention import AttentionConfig, install_attention
    from vidpost.models.quant import install_quant, read_recipe

    out: dict[str, object] = {"bf16": base}
    for name, recipe_name in (("W8A8 INT8 (torchao)", "w8a8-int8"), ("W8A8 FP8 (torchao)", "w8a8-fp8")):
        recipe = read_recipe(ROOT / "configs" / "quant" / f"{recipe_name}.yaml")
        recipe.backend = "torchao"
        if recipe_name == "w8a8-fp8" and device != "cuda":
            out[name] = "needs a GPU (torchao's float8 kernels)"
            continue
        a = copy.copy(base)
        a.__dict__.pop("_attention_state", None)
        a.transformer = copy.deepcopy(base.transformer)
        install_quant(a, recipe)
        out[name] = a
    if device == "cuda":
        a = copy.copy(out["W8A8 FP8 (torchao)"])
        a.__dict__.pop("_attention_state", None)
        a.transformer = copy.deepcopy(out["W8A8 FP8 (torchao)"].transformer)
        install_attention(a, AttentionConfig("fp8_sparse"))
        out["W8A8 FP8 + FP8 attention"] = a
    else:
        out["W8A8 FP8 + FP8 attention"] = "needs a GPU (the Triton FP8 attention kernel)"
    return out


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layers", type=int, help="transformer blocks (default: the model's 30)")
    p.add_argument("--frames", type=int, default=21, help="latent frames (21 = 81 video frames)")
    p.add_argument("--height", type=int, default=60, help="latent height (60 = 480p)")
    p.add_argument("--width", type=int, default=104, help="latent width (104 = 832 px)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from vidpost.models.base import PromptEmbeds

    base = build(args)
    runs = variants(base, args.device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, args.frames, args.height, args.width, generator=g).to(args.device, torch.bfloat16)
    cond = PromptEmbeds(torch.randn(1, 512, 4096, generator=g).to(args.device, torch.bfloat16))
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    ready = {k: v for k, v in runs.items() if not isinstance(v, str)}
    times: dict[str, list[float]] = {k: [] for k in ready}
    with torch.no_grad():
        for r in range(args.repeats + 1):
            for name, adapter in ready.items():
                sync()
                t0 = time.perf_counter()
                adapter.predict_velocity(x, 0.5, cond)
                sync()
                if r:  # round 0 warms up
                    times[name].append(time.perf_counter() - t0)
    tokens = args.frames * (args.height // 2) * (args.width // 2)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    layers = args.layers or 30
    lines = [
        f"Wan2.1-T2V-1.3B architecture ({layers} blocks, random weights), {tokens:,} video tokens + 512 text tokens, "
        f"one transformer pass, {device}; median of {args.repeats} interleaved repeats.",
        "",
        "| variant | s / step | speed-up vs bf16 |",
        "|---|---:|---:|",
    ]
    ref = statistics.median(times["bf16"])
    for name, v in runs.items():
        if isinstance(v, str):
            lines.append(f"| {name} | — ({v}) | — |")
        else:
            m = statistics.median(times[name])
            lines.append(f"| {name} | {m:.4f} | {ref / m:.2f}× |")
    table = "\n".join(lines)
    print(table, file=sys.stdout)
    if args.out:
        args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
