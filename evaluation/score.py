"""Scoring videos with rewards: the reward spec from flags and a config file, and per-video scoring in which
a missing or corrupt video, or a reward that raises on one video, is that video's failure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vidpost.evaluation.gifs import load_video, make_gif
from vidpost.evaluation.stats import finite
from vidpost.media.video_io import VideoReadError
from vidpost.outputs import write_bytes


def load_reward_spec(names: str | Sequence[str] | None, config: str | os.PathLike | None) -> dict[str, Any]:
    """`--rewards` + `--reward-config` → the spec `build_rewards` takes (name → weight or options dict)."""
    cfg: dict[str, Any] = {}
    if config:
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"reward config {path} does not exist")
        from vidpost.config import parse_yaml

        data = parse_yaml(path.read_text(), f"reward config {path}") or {}  # YAML is a superset of JSON
        if isinstance(data, dict) and isinstance(data.get("rewards"), dict):
            data = data["rewards"]
        if not isinstance(data, dict):
            raise ValueError(f"reward config {path}: expected a mapping of reward name → weight or options")
        for name, value in data.items():
            if not isinstance(value, (int, float, dict)) or isinstance(value, bool):
                raise ValueError(f"reward config {path}: {name!r} must map to a weight or an options mapping")
        cfg = dict(data)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if names:
        if len(set(names)) != len(names):
            raise ValueError(f"--rewards names a reward twice: {names}")
        return {n: cfg.get(n, {}) for n in names}
    if not cfg:
        raise ValueError("no rewards given: pass --rewards (e.g. verifier,temporal,motion) and/or --reward-config")
    return cfg


def spec_is_weighted(spec: dict[str, Any]) -> bool:
    """Whether the user gave any reward a weight (a number, or `weight:` in its options): only then is there a
    weighted total — rewards of different scales are never summed with a default weight of 1."""
    return any(isinstance(v, (int, float)) or (isinstance(v, dict) and "weight" in v) for v in spec.values())


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _apply(reward: Any, videos: torch.Tensor, prompts: list[str]) -> list[tuple[float | None, dict] | str]:
    """A reward on a batch → per video (score, components) or an error message; a failing batch is retried one
    video at a time so that one bad video does not fail the others."""
    try:
        out = reward(videos, prompts)
        comps = {k: v.tolist() for k, v in out.components.items()}
        return [(finite(s), {k: finite(v[i]) for k, v in comps.items()}) for i, s in enumerate(out.score.tolist())]
    except Exception as e:  # noqa: BLE001 - recorded per video, the run goes on
        if len(prompts) == 1:
            return [_one_line(e)]
        results: list = []
        for i in range(len(prompts)):
            results += _apply(reward, videos[i : i + 1], prompts[i : i + 1])
        return results


def score_videos(
    records: list[dict[str, Any]],
    rewards: Any,
    *,
    weighted: bool = False,
    batch_size: int = 8,
    thumbs_dir: Path | None = None,
    gif_size: int = 128,
    gif_frames: int = 16,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Read each record's `video`, score it with every reward of `rewards` (a `WeightedReward`) and fill in, in
    place: `status` ("ok", "missing", "unreadable", "reward_error"), `error`, `scores` {reward: value},
    `components` {reward: {component: value}} and `total` (with `weighted`, the user's weights: the weighted sum,
    None unless every reward scored; else None).
    Consecutive videos of equal shape are scored together, up to `batch_size`. With `thumbs_dir` an animated
    GIF of each readable video is written there as `<id>.gif`."""
    names, weights = list(rewards.rewards), rewards.weights
    batch: list[tuple[dict, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        videos = torch.stack([v for _, v in batch])
        prompts = [r["prompt"] for r, _ in batch]
        for name in names:
            for (rec, _), res in zip(batch, _apply(rewards.rewards[name], videos, prompts)):
                if isinstance(res, str):
                    rec["scores"][name] = None
                    rec["errors"].append(f"{name}: {res}")
                else:
                    rec["scores"][name], rec["components"][name] = res
        for rec, _ in batch:
            errors = rec.pop("errors")
            rec["status"] = "reward_error" if errors else "ok"
            rec["error"] = "; ".join(errors)
            values = [rec["scores"].get(n) for n in names]
            scored = weighted and None not in values
            rec["total"] = sum(weights[n] * v for n, v in zip(names, values)) if scored else None
        batch.clear()

    bar = tqdm(records, desc="scoring", unit="video", disable=not progress)
    for rec in bar:
        rec.update(status="pending", error="", scores={}, components={}, total=None)
        try:
            video, fps = load_video(rec.get("video"))
        except FileNotFoundError as e:
            rec.update(status="missing", error=str(e))
            continue
        except VideoReadError as e:
            rec.update(status="unreadable", error=str(e))
            continue
        except Exception as e:  # noqa: BLE001 - a decoder crash on one file is that file's failure
            rec.update(status="unreadable", error=_one_line(e))
            continue
        if thumbs_dir is not None:
            thumbs_dir.mkdir(parents=True, exist_ok=True)
            write_bytes(thumbs_dir / f"{rec['id']}.gif", make_gif(video, fps, size=gif_size, frames=gif_frames))
        rec["errors"] = []
        if batch and (len(batch) >= batch_size or batch[0][1].shape != video.shape):
            flush()
        batch.append((rec, video))
    flush()
    return records
