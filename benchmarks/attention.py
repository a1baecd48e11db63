"""Attention speed and error: torch SDPA vs the block-sparse FP8 / bf16 kernels, measured side by side in one run.

    python benchmarks/attention.py                         # GPU: Wan2.1-1.3B 480p and Wan2.1-14B 720p shapes
    python benchmarks/attention.py --device cpu --small    # tiny shapes on the CPU (reference path)

Rows: torch SDPA (flash backend on CUDA, bf16), ours bf16 dense, ours FP8 dense, ours FP8 sparse at several
block sparsities (pooled top-k per query tile; the achieved sparsity counts the always-kept diagonal tile), ours bf16 sparse at the highest sparsity, and FlashAttention-3 /
SageAttention when importable. Columns: time (median of ``--iters`` after ``--warmup``), dense-equivalent
TFLOPS (``4·B·H·N²·D / time``, the same count for every row), speed-up over SDPA, and relative L1 / cosine
similarity against fp32 dense attention (and, for sparse rows, against fp32 attention with the same block mask,
which separates the quantisation error from the sparsity error), and, when the backend is Triton, the relative
L1 gap to our PyTorch reference of the same plan. Our rows are timed end to end through
``block_sparse_attention_BSHD``: tile reorder, block mask and key lists, quantisation, kernel, reorder back.

Inputs are synthetic: a smooth random field over the latent grid (trilinear upsampling of a coarse grid) plus
noise, with a per-channel key bias, so that attention has the spatio-temporal locality a sparse mask relies on.
Sparse-row errors on these inputs say nothing about a real model's quality.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidpost.kernels.attention_schedule import AttentionPlan
from vidpost.kernels.block_mask import topk_block_mask
from vidpost.kernels.sparse_fp8_attention import block_sparse_attention_BSHD, resolve_backend
from vidpost.kernels.tile_layout import make_tile_layout


@dataclass(frozen=True)
class Shape:
    name: str
    grid: tuple[int, int, int]
    heads: int
    head_dim: int = 128

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


GPU_SHAPES = [
    Shape("Wan2.1-1.3B 480p (81 frames)", (21, 30, 52), 12),
    Shape("Wan2.1-14B 720p (81 frames)", (21, 45, 80), 40),
]
SMALL_SHAPES = [Shape("tiny", (4, 6, 10), 2, 64), Shape("tiny-odd", (3, 5, 7), 2, 48)]


def make_inputs(
    shape: Shape, batch: int, device: str, kind: str = "smooth", seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Q, K, V [B, N, H, D] fp32: a smooth random field over the grid plus noise (``kind="smooth"``) or i.i.d.
    Gaussians (``"gaussian"``: nearly uniform attention, the hardest case for relative errors); K gets a
    per-channel bias."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    T, H, W = shape.grid
    if kind == "gaussian":
        q, k, v = (torch.randn(batch, shape.tokens, shape.heads, shape.head_dim, generator=g) for _ in range(3))
        k = k + 2.0 * torch.randn(shape.head_dim, generator=g)
        return q.to(device), k.to(device), v.to(device)
    out = []
    for i in range(3):
        coarse = torch.randn(
            batch * shape.heads, shape.head_dim, max(1, T // 4), max(1, H // 6), max(1, W // 6), generator=g
        )
        field = F.interpolate(coarse, size=(T, H, W), mode="trilinear", align_corners=False)
        x = field.reshape(batch, shape.heads, shape.head_dim, -1).permute(0, 3, 1, 2)
        x = x * 2.0 + 0.5 * torch.randn(x.shape, generator=g)
        if i == 1:
            x = x + torch.randn(shape.head_dim, generator=g)
        out.append(x.contiguous().to(device))
    return tuple(out)


def timed(fn, warmup: int, iters: int, device: str) -> tuple[float, torch.Tensor]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    out, ref = out.double().flatten(), ref.double().flatten()
    return float((out - ref).abs().sum() / ref.abs().sum()), float(F.cosine_similarity(out, ref, dim=0))


def sdpa_BSHD(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def optional_rows(q, k, v):
    """(name, fn) for FlashAttention-3 and SageAttention when they import."""
    rows = []
    try:
        import flash_attn_interface  # FlashAttention-3 (Hopper)

        def fa3():
            out = flash_attn_interface.flash_attn_func(q, k, v)
            return out[0] if isinstance(out, tuple) else out  # some versions also return the log-sum-exp

        rows.append(("FlashAttention-3 bf16", fa3))
    except ImportError:
        pass
    try:
        from sageattention import sageattn

        rows.append(("SageAttention", lambda: sageattn(q, k, v, tensor_layout="NHD")))
    except ImportError:
        pass
    return rows


def bench_shape(shape: Shape, args, backend: str) -> list[dict]:
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q32, k32, v32 = make_inputs(shape, args.batch, device, args.inputs)
    q, k, v = (x.to(dtype) for x in (q32, k32, v32))
    layout = make_tile_layout(shape.grid, tuple(args.tile))
    flops = 4 * args.batch * shape.heads * shape.tokens**2 * shape.head_dim
    exact = sdpa_BSHD(q32, k32, v32)

    def ours(plan):
        return lambda: block_sparse_attention_BSHD(q, k, v, shape.grid, shape.tokens, tuple(args.tile), plan, backend)

    rows: list[tuple[str, object, AttentionPlan | None]] = []
    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return sdpa_BSHD(q, k, v)

        rows.append(("torch SDPA flash bf16", sdpa, None))
    else:
        rows.append((f"torch SDPA {str(dtype).removeprefix('torch.')}", lambda: sdpa_BSHD(q, k, v), None))
    rows.append(("ours bf16 dense", ours(AttentionPlan(quant="bf16")), None))
    rows.append(("ours FP8 dense", ours(AttentionPlan(quant="fp8")), None))
    sparse_plans = []
    q_tiles, k_tiles = (layout.to_tiles(x).transpose(1, 2) for x in (q, k))
    eye = torch.eye(layout.num_tiles, dtype=torch.bool, device=device)
    for sparsity in args.sparsity:
        keep = max(1, round((1.0 - sparsity) * layout.num_tiles))
        plan = AttentionPlan(dense=False, topk=keep, quant="fp8")
        achieved = 1.0 - float((topk_block_mask(q_tiles, k_tiles, layout, keep) | eye).float().mean())
        sparse_plans.append((plan, achieved))
        name = f"ours FP8 sparse, top-{keep}/{layout.num_tiles} tiles ({100 * achieved:.1f}% block sparsity)"
        rows.append((name, ours(plan), plan))
    plan, achieved = sparse_plans[-1]
    top = AttentionPlan(dense=False, topk=plan.topk, quant="bf16")
    rows.append((f"ours bf16 sparse, top-{plan.topk} ({100 * achieved:.1f}% block sparsity)", ours(top), top))
    for name, fn in optional_rows(q, k, v):
        rows.append((name, fn, None))

    results = []
    base_time = None
    for name, fn, plan in rows:
        try:
            seconds, out = timed(fn, args.warmup, args.iters, device)
        except Exception as err:  # an optional library may reject the shape; report, keep going
            results.append({"method": name, "error": f"{type(err).__name__}: {err}"[:120]})
            continue
        base_time = seconds if base_time is None else base_time
        rel_l1, cos = errors(out, exact)
        row = {"method": name, "ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "speedup": base_time / seconds}
        row.update(rel_l1=rel_l1, cos=cos)
        if plan is not None:
            masked_plan = AttentionPlan(dense=False, window=plan.window, topk=plan.topk, quant="bf16")
            same_mask = block_sparse_attention_BSHD(
                q32, k32, v32, shape.grid, shape.tokens, tuple(args.tile), masked_plan, "reference"
            )
            row["rel_l1_mask"], row["cos_mask"] = errors(out, same_mask)
        if plan is not None or name.startswith("ours"):
            plan = plan or (AttentionPlan(quant="fp8") if "FP8" in name else AttentionPlan(quant="bf16"))
            if backend != "reference":
                reference = block_sparse_attention_BSHD(
                    q, k, v, shape.grid, shape.tokens, tuple(args.tile), plan, "reference"
                )
                row["rel_l1_ref"] = errors(out, reference)[0]
        results.append(row)
        del out
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke run)")
    parser.add_argument("--backend", default="auto", choices=["auto", "triton", "reference"])
    parser.add_argument("--tile", type=int, nargs=3, default=None, help="tile (t h w); default 2 8 8, small 2 2 4")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7, 0.85], help="block sparsities")
    parser.add_argument("--inputs", default="smooth", choices=["smooth", "gaussian"], help="synthetic Q/K/V kind")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA device; use --device cpu --small")
    if any(not 0.0 <= s < 1.0 for s in args.sparsity):
        raise SystemExit("--sparsity values must be in [0, 1)")
    args.tile = args.tile or ([2, 2, 4] if args.small else [2, 8, 8])
    args.warmup = args.warmup if args.warmup is not None else (1 if args.small else 3)
    args.iters = args.iters if args.iters is not None else (3 if args.small else 10)
    backend = resolve_backend(args.backend)
    shapes = SMALL_SHAPES if args.small else GPU_SHAPES

    print(f"- command: `python benchmarks/attention.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    print(f"- machine: {platform.platform()}; torch {torch.__version__}; device {args.device}", end="")
    if args.device == "cuda":
        print(f" ({torch.cuda.get_device_name()})", end="")
    print(f"; our backend: {backend}" + (" (TRITON_INTERPRET=1)" if os.environ.get("TRITON_INTERPRET") == "1" else ""))
    print(
        f"- tile {args.tile}, batch {args.batch}, {args.inputs} inputs, median of {args.iters} after {args.warmup} warm-up"
    )
    for shape in shapes:
        layout = make_tile_layout(shape.grid, tuple(args.tile))
        print(
            f"\n**{shape.name}**: grid {shape.grid}, N = {shape.tokens}, {shape.heads} heads, head dim "
            f"{shape.head_dim}; {layout.num_tiles} tiles of {layout.block} slots "
            f"({layout.num_slots / shape.tokens:.2f}x padded)\n"
        )
        print(
            "| method | ms | dense-equiv. TFLOPS | speed-up vs SDPA | rel. L1 vs fp32 | cosine vs fp32 |"
            " rel. L1 vs fp32 same mask | cosine same mask | rel. L1 vs our reference |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in bench_shape(shape, args, backend):
            if "error" in row:
                print(f"| {row['method']} | failed: {row['error']} | | | | | | | |")
                continue
            masked = f"{row['rel_l1_mask']:.4f} | {row['cos_mask']:.6f}" if "rel_l1_mask" in row else " | "
            gap = f"{row['rel_l1_ref']:.1e}" if "rel_l1_ref" in row else ""
            print(
                f"| {row['method']} | {row['ms']:.3f} | {row['tflops']:.3f} | {row['speedup']:.2f}x | "
                f"{row['rel_l1']:.4f} | {row['cos']:.6f} | {masked} | {gap} |"
            )


if __name__ == "__main__":
    main()
