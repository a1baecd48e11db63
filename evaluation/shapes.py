"""The Shapes world's evaluation: the verifier's rows, verifier success of a model on the held-out prompts, and
the model comparison table (`vidpost shapes-eval`, `enhance-eval`, `demo`, `run`, SFT validation, benchmarks).

Every held-out prompt is sampled `seeds` times (video k of prompt i: `shapes_seed(i, k)`, the same for every
model and every text, so rows of a table differ only in the model or the prompt text) and the Shapes verifier
scores each video against the prompt's scene spec.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch

from vidpost.evaluation.generate import sample_batches
from vidpost.evaluation.settings import GenerationSettings, resolve_settings

ATTRIBUTES = ("colour", "shape", "size", "direction", "speed", "background", "count", "smoothness", "score")
SHAPES_FALLBACK = {"num_frames": 17, "height": 64, "width": 64, "steps": 20, "fps": 8}


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


def shapes_seed(i: int, k: int) -> int:
    """The noise seed of video k of held-out prompt i."""
    return 1000 * k + i


def parse_model(spec: str) -> tuple[str, str | None]:
    """`folder+lora_folder` (or a preset / folder alone) → (model, LoRA or None)."""
    base, _, lora = spec.partition("+")
    return base, (lora or None)


def sample_and_verify(
    adapter: Any,
    settings: GenerationSettings,
    items: list[dict[str, Any]],
    texts: list[str],
    *,
    seeds: int = 1,
    batch_size: int = 16,
) -> Iterator[tuple[int, list[int], torch.Tensor, list[dict[str, Any]]]]:
    """Sample `texts[i]` for every item `seeds` times and verify each video against `items[i]["spec"]` →
    (k, item indices, videos, verifier rows) per batch."""
    for k in range(seeds):
        noise_seeds = [shapes_seed(i, k) for i in range(len(items))]
        for start, videos, _ in sample_batches(adapter, texts, noise_seeds, settings, batch_size=batch_size):
            idx = list(range(start, start + len(videos)))
            yield k, idx, videos, verify_rows(videos, [items[i]["spec"] for i in idx])


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
    from vidpost.models import load, resolve_model_path

    base, lora = parse_model(spec)
    adapter = load(base, lora=lora)
    settings = resolve_settings(
        resolve_model_path(base),
        adapter,
        steps=steps,
        guidance=guidance_scale,
        shift=shift,
        fallback=SHAPES_FALLBACK,
        validate=False,
    )
    texts = prompts if prompts is not None else [it[prompt_key] for it in items]
    records, first_videos = [], []
    t0 = time.time()
    for k, idx, videos, results in sample_and_verify(
        adapter, settings, items, texts, seeds=seeds, batch_size=batch_size
    ):
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
        "settings": settings.sample_kwargs(),
    }
    for a in ATTRIBUTES:
        out[a] = sum(float(r[a]) for r in records) / n
    out["records"] = records
    out["videos"] = first_videos
    return out


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per `evaluate_model` result: success with its 95% Wilson interval, the attribute means."""
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
