"""Numerics of each quantisation recipe on one full-size Wan2.1-T2V-1.3B transformer block (random weights).

    python benchmarks/quant_block.py [--frames 2] [--threads 2] [--out benchmarks/quant_block.md]

The block is diffusers' `WanTransformerBlock` at the 1.3B model's shapes (hidden 1536, 12 heads, FFN 8960,
cross-attention over 512 text tokens), with weights drawn like a trained model's scale (normal, std 0.02; the
block's own initialisation otherwise) and inputs drawn at unit scale; the video tokens are a slice of the 480p grid
(`--frames` latent frames of 30 × 52 patches; 81 frames are 21). Every recipe in configs/quant (or `--recipes`)
replaces the block's linear layers; static and SmoothQuant recipes calibrate on the same input. Printed per recipe:
the output SNR against float32 (10·log10(‖y‖² / ‖y − ŷ‖²), dB) and the packed weight bytes of the block's linear
layers against bf16. Random weights have no trained outliers, so this row measures each format's rounding at real
shapes, not a trained model's sensitivity (the Shapes table does that).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def make_block(seed: int = 0):
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed, WanTransformerBlock

    torch.manual_seed(seed)
    block = WanTransformerBlock(1536, 8960, 12, qk_norm="rms_norm_across_heads", cross_attn_norm=True, eps=1e-6)
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.02)
                m.bias.zero_()
        block.scale_shift_table.normal_(0, 0.02)
    rope = WanRotaryPosEmbed(128, (1, 2, 2), 1024)
    return block.eval(), rope


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument(
        "--recipes", nargs="*", default=[str(r) for r in sorted((ROOT / "configs" / "quant").glob("*.yaml"))]
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    from vidpost.models.quant import (
        QuantLinear,
        _parent,
        bits_per_weight,
        calibrate_with,
        quant_modules,
        read_recipe,
        selected_linears,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    block, rope = make_block()
    g = torch.Generator().manual_seed(1)
    grid = torch.zeros(1, 16, args.frames, 60, 104)  # latent (C, T, H, W) of 480p: the rotary table's shape
    tokens = args.frames * 30 * 52
    x = torch.randn(1, tokens, 1536, generator=g)
    text = torch.randn(1, 512, 1536, generator=g)
    temb = torch.randn(1, 6, 1536, generator=g) * 0.1
    rotary = rope(grid)
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = block(x, text, temb, rotary).float()
        base_s = time.perf_counter() - t0
    rows = [f"| float32 | — | — | {base_s:.2f} |"]
    for path in args.recipes:
        recipe = read_recipe(path)
        if recipe.keep_worst:  # which layers stay is measured on a model's trajectories: nothing to rank in one block
            print(f"{recipe.name}: skipped (keep_worst ranks a whole model's layers)", file=sys.stderr)
            continue
        recipe.include = ["*"]
        q_block, _ = make_block()
        names = selected_linears(q_block, recipe)
        bf16 = sum(q_block.get_submodule(n).weight.numel() * 2 for n in names)
        packed = sum(
            q_block.get_submodule(n).weight.numel()
            * bits_per_weight(recipe.weight, q_block.get_submodule(n).in_features)
            / 8
            for n in names
        )
        for n in names:
            parent, attr = _parent(q_block, n)
            setattr(parent, attr, QuantLinear(getattr(parent, attr), recipe, None))
        with torch.no_grad():
            if recipe.needs_calibration():
                calibrate_with(quant_modules(q_block), recipe, lambda b=q_block: b(x, text, temb, rotary))
            t0 = time.perf_counter()
            out = q_block(x, text, temb, rotary).float()
            secs = time.perf_counter() - t0
        snr = 10 * math.log10(float(ref.pow(2).sum()) / float((ref - out).pow(2).sum()))
        rows.append(f"| {recipe.name} | {snr:.1f} | {packed / bf16:.3f}× | {secs:.2f} |")
        print(rows[-1], file=sys.stderr)
    head = [
        f"One Wan2.1-1.3B block (random weights), {tokens} video tokens ({args.frames} latent frames of 480p) + 512 "
        f"text tokens, CPU ({torch.get_num_threads()} threads).",
        "",
        "| recipe | output SNR vs fp32 (dB) | linear weights vs bf16 | s (fake-quant forward) |",
        "|---|---:|---:|---:|",
    ]
    table = "\n".join(head + rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
