"""The Shapes world's evaluation: the verifier's rows, verifier success of a model on the held-out prompts, and
the model comparison table (`vidpost shapes eval`, `enhance-eval`, `demo`, `run`, SFT validation, benchmarks).

Every held-out prompt is sampled `seeds` times — video k of prompt i from the noise of the one seeding rule
(`vidpost.seeding`): the prompt's own seed + k·SEED_STRIDE, the same for every model and every text, so
rows of a table differ only in the model or the prompt text, and the same videos `vidpost eval --prompts
shapes-heldout` generates — and the Shapes verifier scores each video against the prompt's scene spec. Sizes and
steps come from `resolve_settings` (the model's `vidpost.json`, else the one fallback table).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from vidpost.evaluation.generate import sample_batches
from vidpost.evaluation.settings import GenerationSettings, resolve_settings
from vidpost.evaluation.stats import wilson
from vidpost.seeding import prompt_seed, video_seed

ATTRIBUTES = ("colour", "shape", "size", "direction", "speed", "background", "count", "smoothness", "score")


def verify_rows(videos: torch.Tensor, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Shapes verifier on a batch, as one plain dict per video (scores as floats, `success` as bool)."""
    from vidpost.shapes.verifier import verify_batch
    from vidpost.shapes.world import SceneSpec

    cols = verify_batch(videos, [SceneSpec.from_dict(s) for s in specs])
    n = len(videos)
    return [{k: (bool(v[i]) if v.dtype == bool else float(v[i])) for k, v in cols.items()} for i in range(n)]


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
) -> Iterator[tuple[int, list[int], list[int], torch.Tensor, list[dict[str, Any]]]]:
    """Sample `texts[i]` for every item `seeds` times and verify each video against `items[i]["spec"]` →
    (k, item indices, noise seeds, videos, verifier rows) per batch."""
    for k in range(seeds):
        noise_seeds = [video_seed(prompt_seed(it.get("seed"), 0, i), k) for i, it in enumerate(items)]
        for start, videos, _ in sample_batches(adapter, texts, noise_seeds, settings, batch_size=batch_size):
            idx = list(range(start, start + len(videos)))
            yield k, idx, [noise_seeds[i] for i in idx], videos, verify_rows(videos, [items[i]["spec"] for i in idx])


@torch.no_grad()
def score_row(
    adapter: Any,
    settings: GenerationSettings,
    items: list[dict[str, Any]],
    *,
    seeds: int,
    batch_size: int,
    temporal: Any,
    on_batch: Any = None,
    keep: int = 4,
    texts: list[str] | None = None,
) -> dict[str, Any]:
    """One row of a side-by-side table: sample the items' `texts` (default their captions) `seeds` times (the one
    seeding rule), verify each video against its item's spec and score temporal consistency → {success, score,
    temporal, attributes (per-clip lists; attributes by name), seconds (the sampler), decode_seconds (the VAE's share
    of them), videos (the first `keep` of seed 0)}. `on_batch(k, indices, videos)` sees every batch."""
    captions = texts if texts is not None else [it["caption"] for it in items]
    decode_seconds = [0.0]
    decode = adapter.decode

    def timed(latents: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = decode(latents)
        decode_seconds[0] += time.perf_counter() - t0
        return out

    row: dict[str, Any] = {"success": [], "score": [], "temporal": [], "seconds": 0.0, "videos": []}
    row["attributes"] = {a: [] for a in ATTRIBUTES}
    adapter.decode = timed
    try:
        for k in range(seeds):
            noise_seeds = [video_seed(prompt_seed(it.get("seed"), 0, i), k) for i, it in enumerate(items)]
            for start, videos, secs in sample_batches(adapter, captions, noise_seeds, settings, batch_size=batch_size):
                idx = list(range(start, start + len(videos)))
                res = verify_rows(videos, [items[i]["spec"] for i in idx])
                row["success"] += [float(r["success"]) for r in res]
                row["score"] += [float(r["score"]) for r in res]
                for a in ATTRIBUTES:
                    row["attributes"][a] += [float(r[a]) for r in res]
                row["temporal"] += temporal(videos, [captions[i] for i in idx]).score.tolist()
                row["seconds"] += secs
                if k == 0 and len(row["videos"]) < keep:
                    row["videos"] += list(videos[: keep - len(row["videos"])])
                if on_batch is not None:
                    on_batch(k, idx, videos)
    finally:
        del adapter.decode
    row["decode_seconds"] = decode_seconds[0]
    return row


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
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    keyframe: int | str | None = None,
) -> dict[str, Any]:
    """Sample and verify; returns {'success', 'ci', per-attribute means, 'videos' (first seed), 'records'}."""
    from vidpost.models import load, resolve_model_path

    base, lora = parse_model(spec)
    adapter = load(base, lora=lora)
    settings = resolve_settings(
        resolve_model_path(base),
        adapter,
        num_frames=num_frames,
        height=height,
        width=width,
        steps=steps,
        guidance=guidance_scale,
        shift=shift,
        keyframe=keyframe,
    )
    texts = prompts if prompts is not None else [it[prompt_key] for it in items]
    records, first_videos = [], []
    t0 = time.time()
    for k, idx, noise_seeds, videos, results in sample_and_verify(
        adapter, settings, items, texts, seeds=seeds, batch_size=batch_size
    ):
        for i, s, r in zip(idx, noise_seeds, results):
            records.append({"id": items[i].get("id", i), "k": k, "seed": s, "prompt": texts[i], **r})
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
