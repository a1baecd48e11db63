"""Inference optimisations, measured side by side: per-step cost and quality on the Shapes held-out prompts.

    python benchmarks/inference.py speed   [--repeats 15] [--out results.md]
    python benchmarks/inference.py quality [--limit 32] [--seeds 1] [--weights 2 4] [--out results.md]
    python benchmarks/inference.py models  --models shapes runs/shapes-distill/final [--limit 32] [--seeds 1]
    python benchmarks/inference.py linear-attention [--tokens 4096 16384 32768] [--repeats 3] [--device cpu]

Methods are rows of one table (`METHODS`: a name and the `AttentionConfig` it installs, None = the stock diffusers
processors); add a row to compare a new implementation. Models are columns of the speed table (`speed_models`):
the shipped Shapes model (`assets/shapes/sft`, its default size and guidance) and a mid-size random miniature Wan
(8 layers, width 256, 33 frames → 9 latent frames).

`speed`: one denoising step = `predict_velocity` with classifier-free guidance (two transformer passes) on fixed
latents. For every repeat every method runs once in turn (interleaved, so machine load drifts hit all rows
alike); reported: the median and the minimum seconds per step, each with its ratio to the stock processors (on a
shared CPU the minimum is the steadier of the two).

`models`: the `quality` table with models as rows instead of attention methods (presets or folders, e.g. a
distilled LiT student folder, which `vidpost.models.load` reinstalls with its linear attention); the PSNR column
is against the first model's videos. `MODEL:IMPL` (e.g. `shapes:lit`) installs the attention implementation IMPL
on the model's own weights, untrained (the zero-shot starting point of a distillation).

`linear-attention`: the attention op alone (no projections), batch 1, 12 heads × 64 dims (`--heads`, `--dim`), at
each token count on a (T, H, W) grid: SDPA (`F.scaled_dot_product_attention`, the "sdpa" implementation) against
"lit" (`LiTAttention`: ReLU linear attention via the KV state plus the 3×3×3 depthwise conv on V), with the
teacher's heads and with the heads grouped into `--few-heads` wide heads; interleaved repeats after one warm-up
round, median and minimum seconds and the SDPA/lit ratio (>1 = lit faster).

`quality`: every method samples the held-out prompts (video k of prompt i: the prompt's own seed + k·100003,
`vidpost.seeding`, the same for all methods) at the model's default settings; reported: Shapes verifier success and graded score, the weight-free
`temporal` reward, and the PSNR of each video against the stock processors' video of the same prompt and seed.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vidpost.evaluation.settings import GenerationSettings, resolve_settings
from vidpost.evaluation.shapes import sample_and_verify
from vidpost.models import WanAdapter, load, resolve_model_path
from vidpost.models.attention import AttentionConfig, EavConfig, install_attention
from vidpost.models.base import VideoModelAdapter
from vidpost.models.sampling import initial_noise, sample


@dataclass
class Method:
    name: str
    attention: AttentionConfig | None
    """None = the stock diffusers processors (the baseline)."""
    inference: dict | None = None
    """Other inference settings (`vidpost.models.inference`: cache, compile) applied on top."""

    @property
    def is_baseline(self) -> bool:
        return self.attention is None and not self.inference


SPARSE_TILE = [1, 2, 2]
"""Tiles of 1×2×2 latent positions: the Shapes grid (5, 4, 4) makes 20 tiles of 4 tokens (16-slot blocks)."""
SPARSE_SCHEDULE = {
    "rules": [
        {"steps": [0.0, 0.2], "dense": True},
        {"steps": [0.2, 0.8], "window": [1, 1, 1], "topk": 4},
        {"steps": [0.8, 1.0], "dense": True},
    ]
}
"""Step-aware: dense for the first and last 20% of the steps, a 3×3×3-tile window + 4 pooled top-k tiles between."""


def extra_methods(names: list[str]) -> list[Method]:
    """Rows beyond Enhance-A-Video: FP8 + block-sparse attention, step caching, torch.compile, combined."""
    fp8_dense = {"tile": SPARSE_TILE, "quant": "fp8"}
    fp8_sparse = {"tile": SPARSE_TILE, "quant": "fp8", "schedule": SPARSE_SCHEDULE}
    table = {
        "fp8_dense": Method("FP8 dense (fp8_sparse, dense plan)", AttentionConfig("fp8_sparse", options=fp8_dense)),
        "fp8_sparse": Method(
            "FP8 block-sparse, step-aware schedule", AttentionConfig("fp8_sparse", options=fp8_sparse)
        ),
        "first_block": Method(
            "first-block cache (threshold 0.1)", None, {"cache": {"method": "first_block", "threshold": 0.1}}
        ),
        "first_block_0.2": Method(
            "first-block cache (threshold 0.2)", None, {"cache": {"method": "first_block", "threshold": 0.2}}
        ),
        "taylorseer": Method(
            "TaylorSeer (interval 3, from step 4)",
            None,
            {"cache": {"method": "taylorseer", "options": {"cache_interval": 3, "disable_cache_before_step": 4}}},
        ),
        "compile": Method("torch.compile", None, {"compile": True}),
        "combined": Method(
            "EAV w=2 + FP8 sparse + first-block cache 0.1",
            AttentionConfig("fp8_sparse", options=fp8_sparse, eav=EavConfig(2.0)),
            {"cache": {"method": "first_block", "threshold": 0.1}},
        ),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r}; known: {', '.join(table)}")
    return [table[n] for n in names]


def methods(weights: list[float], eav_steps: tuple[int, int] | None = None) -> list[Method]:
    """The table rows: the baseline first, then one row per configuration to compare."""
    rows = [Method("stock diffusers processors", None), Method("vidpost processor, sdpa", AttentionConfig())]
    rows += [Method(f"Enhance-A-Video w={w:g}", AttentionConfig(eav=EavConfig(w))) for w in weights]
    if eav_steps is not None:
        a, b = eav_steps
        rows += [
            Method(
                f"Enhance-A-Video w={w:g}, steps [{a}, {b})",
                AttentionConfig(eav=EavConfig(w, step_start=a, step_end=b)),
            )
            for w in weights
        ]
    return rows


@dataclass
class Workload:
    name: str
    adapter: VideoModelAdapter
    settings: GenerationSettings


def shapes_workload() -> Workload:
    path = resolve_model_path("shapes")
    adapter = load(path)
    return Workload("Shapes (assets/shapes/sft)", adapter, resolve_settings(path, adapter))


def speed_models() -> list[Workload]:
    mini = WanAdapter.tiny(seed=0, num_layers=8, num_heads=4, head_dim=64, ffn_dim=1024, text_dim=64)
    mini_settings = GenerationSettings(num_frames=33, height=128, width=128, steps=20, guidance=5.0, shift=3.0, fps=16)
    return [shapes_workload(), Workload("mini Wan (8 layers, dim 256)", mini, mini_settings)]


def _install(adapter: VideoModelAdapter, m: Method, steps: int | None = None):
    """Install a row's attention and inference settings (`apply_inference`); None for the stock baseline."""
    from vidpost.models.inference import InferenceConfig, apply_inference

    if m.is_baseline:
        return None
    cfg = InferenceConfig.from_dict(m.inference)
    cfg.attention = m.attention or {}
    return apply_inference(adapter, cfg, num_inference_steps=steps)


@torch.no_grad()
def speed(rows: list[Method], workloads: list[Workload], repeats: int) -> str:
    lines = []
    header = "| method | " + " | ".join(f"{w.name}: median s / step | ratio | min s / step | ratio" for w in workloads)
    header += " |"
    cells: dict[str, list[str]] = {m.name: [] for m in rows}
    shapes_txt = []
    for w in workloads:
        a = w.adapter
        shape = a.latent_shape(1, w.settings.num_frames, w.settings.height, w.settings.width)
        grid = a.latent_grid(shape)
        shapes_txt.append(f"{w.name}: latents {list(shape)}, token grid {grid} = {math.prod(grid)} tokens")
        x = initial_noise(shape, seed=0)
        cond, uncond = a.encode_prompt(["a red circle moves to the right"]), a.encode_prompt([""])
        times: dict[str, list[float]] = {m.name: [] for m in rows}
        state = a.attention_state
        for r in range(repeats + 2):
            for m in rows:
                handle = _install(a, m)
                state.set_step(r % w.settings.steps, w.settings.steps, 0.5)
                t0 = time.perf_counter()
                a.predict_velocity(x, 0.5, cond, uncond, w.settings.guidance)
                dt = time.perf_counter() - t0
                state.clear_step()
                if handle is not None:
                    handle.remove()
                if r >= 2:  # two warm-up rounds
                    times[m.name].append(dt)
        base, base_min = statistics.median(times[rows[0].name]), min(times[rows[0].name])
        for m in rows:
            med, low = statistics.median(times[m.name]), min(times[m.name])
            cells[m.name] += [f"{med:.4f}", f"{med / base:.3f}", f"{low:.4f}", f"{low / base_min:.3f}"]
    lines.append(header)
    lines.append("|---|" + "---:|---:|---:|---:|" * len(workloads))
    for m in rows:
        lines.append(f"| {m.name} | " + " | ".join(cells[m.name]) + " |")
    return "\n".join(["- " + s for s in shapes_txt] + ["", *lines])


def _score(
    adapter: VideoModelAdapter,
    settings: GenerationSettings,
    items: list[dict],
    seeds: int,
    batch: int,
    temporal,
    baseline: dict[tuple[int, int], torch.Tensor],
    is_baseline: bool,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Sample and score the held-out items (`vidpost.evaluation.shapes`' seeding): verifier success, graded
    score, `temporal`, and PSNR against `baseline` (which the baseline row fills instead)."""
    succ, score, temp, psnrs = [], [], [], []
    captions = [it["caption"] for it in items]
    for k, idx, _, videos, res in sample_and_verify(adapter, settings, items, captions, seeds=seeds, batch_size=batch):
        succ += [float(r["success"]) for r in res]
        score += [r["score"] for r in res]
        temp += temporal(videos, [captions[i] for i in idx]).score.tolist()
        for j, i in enumerate(idx):
            if is_baseline:
                baseline[(k, i)] = videos[j]
            else:
                psnrs.append(psnr(videos[j], baseline[(k, i)]))
    return succ, score, temp, psnrs


@torch.no_grad()
def model_quality(specs: list[str], limit: int | None, seeds: int, batch: int) -> str:
    from vidpost.rewards.base import build_reward
    from vidpost.shapes.splits import heldout_prompts

    items = heldout_prompts()
    items = items[:limit] if limit else items
    temporal = build_reward("temporal")
    baseline: dict[tuple[int, int], torch.Tensor] = {}
    out = []
    for spec in specs:
        name, _, impl = spec.partition(":")
        path = resolve_model_path(name)
        a = load(path)
        if impl:  # e.g. "shapes:lit": the dense weights with that attention installed, untrained
            install_attention(a, AttentionConfig(impl))
        settings = resolve_settings(path, a)
        t0 = time.time()
        succ, score, temp, psnrs = _score(a, settings, items, seeds, batch, temporal, baseline, spec == specs[0])
        n = len(succ)
        pv = f"{statistics.mean(psnrs):.2f}" if psnrs else "—"
        out.append(
            f"| {spec} | {n} | {100 * sum(succ) / n:.1f}% | {statistics.mean(score):.4f} | "
            f"{statistics.mean(temp):.4f} | {pv} | {(time.time() - t0) / n:.2f} |"
        )
        print(out[-1], file=sys.stderr)
    head = [
        f"| model | videos | verifier success | graded score | temporal | PSNR vs {specs[0]} (dB) | s / video |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    return "\n".join(head + out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


@torch.no_grad()
def quality(rows: list[Method], limit: int | None, seeds: int, batch: int) -> str:
    from vidpost.rewards.base import build_reward
    from vidpost.shapes.splits import heldout_prompts

    items = heldout_prompts()
    items = items[:limit] if limit else items
    w = shapes_workload()
    a = w.adapter
    temporal = build_reward("temporal")
    shape = a.latent_shape(1, w.settings.num_frames, w.settings.height, w.settings.width)
    settings = w.settings
    kw = settings.sample_kwargs()
    baseline: dict[tuple[int, int], torch.Tensor] = {}
    out = []
    for m in rows:
        handle = _install(a, m, w.settings.steps)
        # one untimed generation first: torch.compile compiles, caches allocate (same for every row)
        sample(a, [items[0]["caption"]], **kw, seed=0, latents=initial_noise(shape, seed=0))
        t0 = time.time()
        succ, score, temp, psnrs = _score(a, settings, items, seeds, batch, temporal, baseline, m.is_baseline)
        if handle is not None:
            handle.remove()
        n = len(succ)
        pv = f"{statistics.mean(psnrs):.2f}" if psnrs and all(math.isfinite(p) for p in psnrs) else "∞ (identical)"
        out.append(
            f"| {m.name} | {n} | {100 * sum(succ) / n:.1f}% | {statistics.mean(score):.4f} | "
            f"{statistics.mean(temp):.4f} | {pv if not m.is_baseline else '—'} | {(time.time() - t0) / n:.2f} |"
        )
        print(out[-1], file=sys.stderr)
    head = [
        "| method | videos | verifier success | graded score | temporal | PSNR vs stock (dB) | s / video |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    return "\n".join(head + out)


GRIDS = {4096: (16, 16, 16), 16384: (16, 32, 32), 32768: (32, 32, 32)}


def _grid_for(n: int) -> tuple[int, int, int]:
    if n in GRIDS:
        return GRIDS[n]
    side = round((n / 4) ** 0.5)
    if 4 * side * side != n:
        raise ValueError(f"--tokens {n}: use 4096/16384/32768 or 4·s² (grid 4 × s × s)")
    return (4, side, side)


@torch.no_grad()
def linear_attention_speed(
    tokens: list[int], heads: int, dim: int, few_heads: int, repeats: int, device: str, dtype: torch.dtype
) -> str:
    from vidpost.models.attention import AttentionContext, sdpa_attention
    from vidpost.models.lit import LiTAttention

    rows = {
        "sdpa": None,
        f"lit ({heads} heads)": LiTAttention(heads, heads * dim),
        f"lit ({few_heads} heads of {heads // few_heads * dim})": LiTAttention(heads, heads * dim, heads=few_heads),
    }
    for m in rows.values():
        if m is not None:
            torch.nn.init.normal_(m.dwc_weight, std=0.05)  # trained-looking weights (zeros would not change cost)
            m.to(device)
    lines = [
        "| tokens (grid) | method | median s | min s | SDPA / method (median) | SDPA / method (min) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    g = torch.Generator().manual_seed(0)
    for n in tokens:
        grid = _grid_for(n)
        q, k, v = (torch.randn(1, n, heads, dim, generator=g).to(device, dtype) for _ in range(3))
        ctx = AttentionContext(grid, n, None, None, None, "cond", 0)
        times: dict[str, list[float]] = {name: [] for name in rows}
        for r in range(repeats + 1):
            for name, m in rows.items():
                fn = sdpa_attention if m is None else m
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn(q, k, v, ctx)
                if device == "cuda":
                    torch.cuda.synchronize()
                if r >= 1:
                    times[name].append(time.perf_counter() - t0)
        b_med, b_min = statistics.median(times["sdpa"]), min(times["sdpa"])
        for name in rows:
            med, low = statistics.median(times[name]), min(times[name])
            lines.append(f"| {n} {grid} | {name} | {med:.4f} | {low:.4f} | {b_med / med:.2f}× | {b_min / low:.2f}× |")
            print(lines[-1], file=sys.stderr)
    return f"- attention alone, batch 1, {heads} heads × {dim} dims, {dtype}, device {device}\n\n" + "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["speed", "quality", "models", "linear-attention"])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--weights", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--eav-steps", help="START:END — also a row per weight enhancing only those steps")
    p.add_argument(
        "--methods",
        nargs="*",
        default=[],
        help="more rows: fp8_dense fp8_sparse first_block first_block_0.2 taylorseer compile combined",
    )
    p.add_argument("--limit", type=int, help="first N held-out prompts (quality)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 32768], help="linear-attention sizes")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--models", nargs="+", default=["shapes"], help="models: presets or folders (first = reference)")
    p.add_argument("--few-heads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", type=Path, help="also append the markdown here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = tuple(int(x) for x in args.eav_steps.split(":")) if args.eav_steps else None
    rows = methods(args.weights, steps) + extra_methods(args.methods)
    env = (
        f"- machine: {platform.platform()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"command: `python benchmarks/inference.py {' '.join(sys.argv[1:])}`"
    )
    if args.what == "linear-attention":
        dtype = getattr(torch, args.dtype)
        md = linear_attention_speed(
            args.tokens, args.heads, args.dim, args.few_heads, args.repeats, args.device, dtype
        )
    elif args.what == "models":
        md = model_quality(args.models, args.limit, args.seeds, args.batch)
    elif args.what == "speed":
        md = speed(rows, speed_models(), args.repeats)
    else:
        md = quality(rows, args.limit, args.seeds, args.batch)
    text = env + "\n" + md + "\n"
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
