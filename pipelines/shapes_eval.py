"""`vidpost shapes-eval`: verifier success of one or more models on the Shapes world's held-out prompts.

    vidpost shapes-eval --models shapes-base shapes [--seeds 2] [--prompt-key caption] [--out results/shapes-eval]

For every model (a preset, a folder, or `folder+lora_folder`), each held-out prompt is sampled with `--seeds`
seeds (prompt i, seed k → seed 1000·k + i, the same for every model) at the model's default size and steps, and
the Shapes verifier scores the video against the prompt's scene spec. Printed and written (markdown + JSON): the
success rate with a 95% Wilson interval and the mean per-attribute scores; a contact sheet per model shows the
first prompts. `--prompt-key prompt_user` evaluates the free-form user-style prompts of the same scenes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vidpost.models import load, resolve_model_path
from vidpost.models.base import read_vidpost_config
from vidpost.models.sampling import initial_noise, sample

ATTRIBUTES = ("colour", "shape", "size", "direction", "speed", "background", "count", "smoothness", "score")


def verify_rows(videos: torch.Tensor, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Shapes verifier on a batch, as one plain dict per video (scores as floats, `success` as bool)."""
    from vidpost.shapes.verifier import verify_batch
    from vidpost.shapes.world import SceneSpec

    cols = verify_batch(videos, [SceneSpec.from_dict(s) for s in specs])
    n = len(videos)
    return [{k: (bool(v[i]) if v.dtype == bool else float(v[i])) for k, v in cols.items()} for i in range(n)]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def parse_model(spec: str) -> tuple[str, str | None]:
    base, _, lora = spec.partition("+")
    return base, (lora or None)


@torch.no_grad()
def evaluate_model(
    spec: str,
    items: list[dict[str, Any]],
    *,
    prompt_key: str = "caption",
    seeds: int = 1,
    batch_size: int = 16,
    steps: int | None = None,
    guidance_scale: float | None = None,
    shift: float | None = None,
    prompts: list[str] | None = None,
) -> dict[str, Any]:
    """Sample and verify; returns {'success', 'ci', per-attribute means, 'videos' (first seed), 'records'}."""
    base, lora = parse_model(spec)
    adapter = load(base, lora=lora)
    gen = {"num_frames": 17, "height": 64, "width": 64, "steps": 20} | read_vidpost_config(
        resolve_model_path(base)
    ).get("generation", {})
    texts = prompts if prompts is not None else [it[prompt_key] for it in items]
    settings = dict(
        num_frames=gen["num_frames"],
        height=gen["height"],
        width=gen["width"],
        num_inference_steps=steps or gen["steps"],
        guidance_scale=guidance_scale if guidance_scale is not None else adapter.default_guidance_scale,
        shift=shift if shift is not None else adapter.default_shift,
    )
    shape = adapter.latent_shape(1, settings["num_frames"], settings["height"], settings["width"])
    records, first_videos = [], []
    t0 = time.time()
    for k in range(seeds):
        for start in range(0, len(items), batch_size):
            idx = list(range(start, min(start + batch_size, len(items))))
            noise = torch.cat([initial_noise(shape, seed=1000 * k + i) for i in idx])
            videos = sample(adapter, [texts[i] for i in idx], **settings, seed=0, latents=noise)
            results = verify_rows(videos, [items[i]["spec"] for i in idx])
            for i, r in zip(idx, results):
                records.append({"id": items[i].get("id", i), "seed": k, "prompt": texts[i], **r})
            if k == 0:
                first_videos += list(videos)
    n = len(records)
    wins = sum(bool(r["success"]) for r in records)
    out = {
        "model": spec,
        "prompt_key": prompt_key,
        "n": n,
        "success": wins / n,
        "ci95": wilson(wins, n),
        "seconds_per_video": (time.time() - t0) / n,
        "settings": settings,
    }
    for a in ATTRIBUTES:
        out[a] = sum(float(r[a]) for r in records) / n
    out["records"] = records
    out["videos"] = first_videos
    return out


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | prompts | n | success | 95% CI | " + " | ".join(ATTRIBUTES) + " |",
        "|---|---|---|---|---|" + "---|" * len(ATTRIBUTES),
    ]
    for r in results:
        lo, hi = r["ci95"]
        attrs = " | ".join(f"{r[a]:.3f}" for a in ATTRIBUTES)
        lines.append(
            f"| {r['model']} | {r['prompt_key']} | {r['n']} | **{100 * r['success']:.1f}%** | "
            f"{100 * lo:.1f}–{100 * hi:.1f} | {attrs} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vidpost shapes-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["shapes-base", "shapes"], help="presets/folders (base+lora ok)")
    p.add_argument("--prompt-key", default="caption", choices=["caption", "prompt_user"])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--shift", type=float)
    p.add_argument("--limit", type=int, help="evaluate only the first N held-out prompts")
    p.add_argument("--out", type=Path, default=Path("outputs/shapes-eval"))
    args = p.parse_args(argv)
    from vidpost.media.video_io import contact_sheet
    from vidpost.shapes.splits import heldout_prompts

    items = heldout_prompts()[: args.limit] if args.limit else heldout_prompts()
    results = []
    try:
        for spec in args.models:
            r = evaluate_model(
                spec,
                items,
                prompt_key=args.prompt_key,
                seeds=args.seeds,
                steps=args.steps,
                guidance_scale=args.guidance,
                shift=args.shift,
            )
            results.append(r)
            print(f"{spec}: success {100 * r['success']:.1f}% (n={r['n']})", file=sys.stderr)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for r in results:
        name = r["model"].replace("/", "_").replace("+", "__")
        labels = [f"{rec['prompt']} [{'ok' if rec['success'] else 'x'}]" for rec in r["records"][:8]]
        contact_sheet(r.pop("videos")[:8], args.out / f"{name}.png", labels=labels)
    table = markdown_table(results)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
