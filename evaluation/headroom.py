"""What a Shapes model leaves for RL to find: best-of-k headroom and the VAE round trip of its successes.

    vidpost shapes headroom [--model shapes] [--seeds 8] [--limit N] [--json] [--out DIR]

Every held-out prompt is sampled `seeds` times (the evaluation's seeding rule, `evaluation.shapes`) and each video
verified against the prompt's scene:
- `mean_success`: the verifier's success over all videos (what one sample per prompt achieves on average);
- `best_of_k_success`: the fraction of prompts with at least one successful video among the k — what a policy
  that always produced its best sample would reach; `headroom` is the difference, in points of success
  (likewise `mean_graded` / `best_of_k_graded` for the graded score);
- `round_trip_kept`: of the successful videos, the fraction still successful after the round trip a training
  sample makes — written to mp4 (`write_video`, its default quality), read back, encoded by the model's VAE
  (posterior mean) and decoded again. Below 1 it is how much of a reward-selected sample a fine-tune on mp4
  files, or on re-encoded latents, loses before it learns anything.
`--out` keeps the mp4 files (`<prompt id>_<k>.mp4`) and `headroom.json`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidpost.outputs import write_json


@torch.no_grad()
def round_trip(adapter: Any, videos: torch.Tensor, folder: Path, names: list[str]) -> torch.Tensor:
    """videos [B, 3, T, H, W] in [0, 1] → mp4 files `folder/<name>.mp4` → read back → VAE encode → decode."""
    from vidpost.media.video_io import read_video, write_video

    back = []
    for video, name in zip(videos, names):
        path = write_video(folder / f"{name}.mp4", video)
        back.append(read_video(path, num_frames=video.shape[1]))
    return adapter.decode(adapter.encode_video(torch.stack(back)))


@torch.no_grad()
def shapes_headroom(
    model: str = "shapes",
    *,
    seeds: int = 8,
    limit: int | None = None,
    batch_size: int = 16,
    out: Path | None = None,
) -> dict[str, Any]:
    """The module doc's measurements on the held-out prompts (the first `limit` of them) for `model` (a folder or
    preset, or `model+lora`)."""
    from vidpost.evaluation.settings import resolve_settings
    from vidpost.evaluation.shapes import parse_model, sample_and_verify, verify_rows
    from vidpost.models import load, resolve_model_path
    from vidpost.shapes.splits import heldout_prompts

    if seeds < 2 or (limit is not None and limit < 1):
        raise ValueError(f"seeds must be ≥ 2 and limit ≥ 1 (got seeds={seeds}, limit={limit})")
    items = heldout_prompts()[:limit] if limit else heldout_prompts()
    base, lora = parse_model(model)
    adapter = load(base, lora=lora)
    settings = resolve_settings(resolve_model_path(base), adapter)
    success = np.zeros((len(items), seeds), dtype=bool)
    graded = np.zeros((len(items), seeds))
    kept: list[bool] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        texts = [it["caption"] for it in items]
        for k, idx, _, videos, rows in sample_and_verify(
            adapter, settings, items, texts, seeds=seeds, batch_size=batch_size
        ):
            for i, r in zip(idx, rows):
                success[i, k], graded[i, k] = r["success"], r["score"]
            won = [j for j, r in enumerate(rows) if r["success"]]
            if won:
                names = [f"{items[idx[j]].get('id', idx[j])}_{k}" for j in won]
                again = verify_rows(
                    round_trip(adapter, videos[won], folder, names), [items[idx[j]]["spec"] for j in won]
                )
                kept += [bool(r["success"]) for r in again]
    seconds = time.perf_counter() - t0
    result = {
        "model": str(model),
        "n_prompts": len(items),
        "seeds": seeds,
        "mean_success": float(success.mean()),
        "best_of_k_success": float(success.any(axis=1).mean()),
        "headroom": float(100 * (success.any(axis=1).mean() - success.mean())),
        "mean_graded": float(graded.mean()),
        "best_of_k_graded": float(graded.max(axis=1).mean()),
        "n_successful": int(success.sum()),
        "round_trip_kept": float(np.mean(kept)) if kept else None,
        "seconds_per_clip": round(seconds / success.size, 3),
        "settings": settings.sample_kwargs(),
    }
    if out is not None:
        write_json(Path(out) / "headroom.json", result, indent=1)
    return result


def headroom_table(r: dict[str, Any]) -> str:
    """The measurements as plain text."""
    kept = "n/a (no successful video)" if r["round_trip_kept"] is None else f"{r['round_trip_kept']:.3f}"
    return "\n".join(
        [
            f"{r['model']}: {r['n_prompts']} held-out prompts x {r['seeds']} seeds",
            f"{'':28s}{'mean sample':>12s}{'best of ' + str(r['seeds']):>12s}",
            f"{'success':28s}{r['mean_success']:12.3f}{r['best_of_k_success']:12.3f}",
            f"{'graded':28s}{r['mean_graded']:12.3f}{r['best_of_k_graded']:12.3f}",
            f"headroom: {r['headroom']:.1f} points of success",
            f"round trip (mp4 -> VAE -> decode) keeps {kept} of {r['n_successful']} successful videos",
            f"({r['seconds_per_clip']} s per clip, sampling + verifying + round trip)",
        ]
    )
