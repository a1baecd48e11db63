"""CPU speed of torchao's int8 kernels (W8A8: int8 dynamic per-token activations × int8 per-channel weights) against
float32 and bfloat16 linear layers, side by side in one run.

    python benchmarks/quant_speed.py [--tokens 1560 3120] [--repeats 5] [--threads 2] [--out benchmarks/quant_speed.md]

Rows: the Wan2.1-T2V-1.3B transformer's linear-layer shapes (attention projections 1536 → 1536, FFN up 1536 → 8960,
FFN down 8960 → 1536; random weights) at each token count (a whole number of latent frames of the 480p grid, 1560 tokens each; 81 frames are
21 latent frames, 32760 tokens), then one whole `WanTransformerBlock` at those shapes with all of its linear layers
converted (attention itself stays float32). Each repeat runs every variant once in turn (interleaved, so drifts in
machine load hit every column alike) after one warm-up round; reported: the median seconds and the speed-up over
float32 (> 1 = faster). The int8 path is the one `vidpost quantize` runs for the `w8a8-int8` recipe on a CPU
(`torchao.quantization.Int8DynamicActivationInt8WeightConfig`); on a GPU, float8 rows would need the device.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _int8(module: torch.nn.Module) -> torch.nn.Module:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    m = copy.deepcopy(module)
    quantize_(m, Int8DynamicActivationInt8WeightConfig())
    return m


def _bf16(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).to(torch.bfloat16)


def timed(calls: list, repeats: int) -> list[list[float]]:
    """Seconds of each callable per repeat; each repeat times each once, in turn, after one warm-up round."""
    for c in calls:
        c()
    out: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for i, c in enumerate(calls):
            t0 = time.perf_counter()
            c()
            out[i].append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1560, 3120], help="multiples of 1560 (latent frames)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchao
    from quant_block import make_block

    rows = []
    shapes = {"attention q/k/v/o": (1536, 1536), "FFN up": (1536, 8960), "FFN down": (8960, 1536)}
    torch.manual_seed(0)
    if any(t % 1560 for t in args.tokens):
        p.error("--tokens must be multiples of 1560 (one latent frame of the 480p grid)")
    with torch.no_grad():
        for tokens in args.tokens:
            for name, (i, o) in shapes.items():
                lin = torch.nn.Linear(i, o).eval()
                q, h = _int8(torch.nn.Sequential(lin)), _bf16(lin)
                x = torch.randn(1, tokens, i)
                xb = x.to(torch.bfloat16)
                t = timed([partial(lin, x), partial(h, xb), partial(q, x)], args.repeats)
                rows.append((f"{name} {i}→{o}", tokens, *[statistics.median(v) for v in t]))
                print(rows[-1], file=sys.stderr)
            block, rope = make_block()
            g = torch.Generator().manual_seed(1)
            frames = tokens // (30 * 52)
            x = torch.randn(1, tokens, 1536, generator=g)
            text = torch.randn(1, 512, 1536, generator=g)
            temb = torch.randn(1, 6, 1536, generator=g) * 0.1
            rotary = rope(torch.zeros(1, 16, frames, 60, 104))
            qb = _int8(block)
            hb = _bf16(block)
            xb, tb, eb = x.bfloat16(), text.bfloat16(), temb.bfloat16()
            calls = [
                partial(block, x, text, temb, rotary),
                partial(hb, xb, tb, eb, rotary),
                partial(qb, x, text, temb, rotary),
            ]
            t = timed(calls, max(1, args.repeats // 2))
            rows.append(("whole block (linear layers converted)", tokens, *[statistics.median(v) for v in t]))
            print(rows[-1], file=sys.stderr)
    head = [
        f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}, "
        f"torchao {torchao.__version__}; median of {args.repeats} interleaved repeats after a warm-up.",
        "",
        "| layer (Wan2.1-1.3B shapes) | tokens | float32 (s) | bfloat16 (s) | int8 W8A8 torchao (s) | bf16 vs fp32 | int8 vs fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines = [f"| {n} | {t} | {a:.4f} | {b:.4f} | {c:.4f} | {a / b:.2f}× | {a / c:.2f}× |" for n, t, a, b, c in rows]
    table = "\n".join(head + lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
