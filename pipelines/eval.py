"""`vidpost eval`: score videos with reward models → per-video CSV/JSON, summary statistics, plots and one
self-contained HTML report; `--compare` sets the run against a previous one.

    vidpost eval --prompts prompts.txt --videos outputs/batch/ --rewards temporal,motion --out results/eval-a
    vidpost eval --prompts shapes-heldout --model shapes --rewards verifier,temporal,motion --out results/sft \\
        --compare results/base
    vidpost eval --out results/sft --compare results/base     # re-summarise / re-compare an existing run

Prompts (`--prompts`): a `.txt` file (one prompt per line; blank lines and `#` comments skipped), a `.jsonl` or
`.json` list of objects `{id?, prompt | caption, seed?}` (or of plain strings), or `shapes-heldout` — the Shapes
world's held-out split with its canonical captions as prompts (what the `verifier` reward parses), its ids and
render seeds. Ids default to the zero-padded index (`000`, `001`, ...) and name the video files.

Videos. `--videos DIR` takes `<DIR>/<id>.mp4` (or `.gif`, `.webm`, `.mkv`, `.mov`) for each prompt; with several
videos per prompt (`--seeds N`, or found automatically) `<id>_s<k>.<ext>`. `--model PATH_OR_PRESET [--lora DIR]`
samples them with vidpost's sampler instead and writes `<out>/videos/<id>.mp4`; video k of prompt i gets seed
base + k·100003, base being the prompt's `seed` from the file or `--seed` + i (so a video does not depend on
its batch). Scores are always of the decoded files, so re-scoring an output folder with
`--videos <out>/videos --prompts <out>/prompts.jsonl` reproduces them. A missing, unreadable or corrupt video, or
a reward that raises on one video, is recorded as a failure (status + message) and listed in the report; it
never stops the run.

Rewards (`--rewards a,b,c`, `--reward-config FILE`): registry names of `vidpost.rewards` (`verifier`,
`verifier_binary`, `temporal`, `motion`, and with a weights `path`: `clip`, `hps`, `pickscore`, `aesthetic`,
`videoalign`, ...). The config (YAML or JSON) maps a name to its weight or to `{weight, type, path, ...}` options,
at top level or under `rewards:`; without `--rewards` every reward it names is used. `total` is the weighted sum.

Outputs in `--out`: `scores.csv` / `scores.json` (per video: id, prompt, seed, status, error, each reward's score
and its components, total), `summary.json` / `summary.md`, `plots/*.png`, `thumbs/<id>.gif`, `prompts.jsonl`,
`report.html` (summary table, plots, a grid per prompt with an animated GIF and the scores of each video, the
failures; images embedded as data URIs, so the file works on its own) and with `--compare` `compare.json` /
`compare.md`.

Statistics. Per reward over the videos it scored: n, mean, sample std (ddof 1), median, min, max and a 95%
t-interval for the mean, mean ± t(0.975, n − 1)·s/√n; a metric whose values are all 0 or 1 also gets a 95%
Wilson score interval for its rate. `--compare` joins the two runs on video id; per reward over the pairs that
both scored: the mean paired difference (this − other) with its 95% t-interval, and the win rate, the fraction
of pairs where this run scores higher, ties counting one half (higher is taken to be better for every reward).
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as _dt
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vidpost.media.video_io import VideoReadError, probe_video, read_video, write_video

__all__ = [
    "SHAPES_HELDOUT",
    "compare_runs",
    "generate_videos",
    "load_prompts",
    "load_reward_spec",
    "load_run",
    "main",
    "make_plots",
    "make_records",
    "score_videos",
    "stats",
    "summarise",
    "t_quantile",
    "wilson",
    "write_report",
    "write_scores",
]

SHAPES_HELDOUT = "shapes-heldout"
VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".mkv", ".mov")
SEED_STRIDE = 100_003  # seed of video k of a prompt = base seed + k·SEED_STRIDE
CI_METHOD = (
    "95% t-interval for the mean: mean ± t(0.975, n−1)·s/√n (s: sample std, ddof 1); metrics whose values are "
    "all 0/1 also get a 95% Wilson score interval"
)
COMPARE_METHOD = (
    "joined on video id over pairs both runs scored; delta = mean of (this − other) with a 95% t-interval; "
    "win rate = fraction of pairs where this run is higher, ties count ½"
)
_ID_OK = re.compile(r"^[^/\\\x00]+$")


# ------------------------------------------------------------------------------------------------- prompts


def _read_items(path: Path) -> list[Any]:
    suffix = path.suffix.lower()
    text = path.read_text()
    if suffix == ".jsonl":
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        return items
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg})") from e
        if isinstance(data, dict) and isinstance(data.get("prompts"), list):
            data = data["prompts"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of prompts (or {{'prompts': [...]}})")
        return data
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def load_prompts(source: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """Prompt items `{id, prompt, seed}` (seed None when not given) from a file or `shapes-heldout`, in order.

    Raises ValueError for a missing/empty file, an item without a prompt, or an id that is duplicated or cannot
    name a file."""
    if str(source) == SHAPES_HELDOUT:
        from vidpost.shapes.splits import heldout_prompts

        raw: list[Any] = [{"id": it["id"], "prompt": it["caption"], "seed": it["seed"]} for it in heldout_prompts()]
        where = SHAPES_HELDOUT
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"prompts file {path} does not exist (or pass '{SHAPES_HELDOUT}')")
        raw, where = _read_items(path), str(path)
    if limit is not None:
        raw = raw[: max(0, limit)]
    if not raw:
        raise ValueError(f"no prompts in {where}")
    width = max(3, len(str(len(raw) - 1)))
    items, seen = [], set()
    for i, it in enumerate(raw):
        if isinstance(it, str):
            it = {"prompt": it}
        if not isinstance(it, dict):
            raise ValueError(f"{where}: item {i} is neither a string nor an object: {it!r}")
        prompt = it.get("prompt", it.get("caption"))
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: item {i} has no 'prompt' (or 'caption') text")
        pid = str(it["id"]) if it.get("id") is not None else f"{i:0{width}d}"
        if not _ID_OK.match(pid) or pid.startswith(".") or pid != pid.strip():
            raise ValueError(f"{where}: item {i}: id {pid!r} cannot name a file (no slashes, no leading dot)")
        if pid in seen:
            raise ValueError(f"{where}: duplicate id {pid!r}")
        seen.add(pid)
        seed = it.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"{where}: item {i}: seed must be an integer, got {seed!r}")
        items.append({"id": pid, "prompt": prompt.strip(), "seed": seed})
    return items


def discover_videos(videos_dir: Path) -> list[dict[str, Any]]:
    """Prompt-less items, one per video file in `videos_dir` (for rewards that ignore the prompt)."""
    files = sorted(p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in {videos_dir}")
    return [{"id": p.stem, "prompt": "", "seed": None} for p in files]


def _find_video(videos_dir: Path, vid: str) -> Path | None:
    for ext in VIDEO_EXTENSIONS:
        if (p := videos_dir / f"{vid}{ext}").exists():
            return p
    return None


def make_records(
    items: list[dict[str, Any]],
    *,
    seeds: int | None = 1,
    base_seed: int | None = 0,
    videos_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """One record per video: `{id, prompt_id, prompt, seed, video}`. With `videos_dir`, `video` is the matched
    file or None (missing); `seeds=None` then finds `<id>.<ext>` or else every `<id>_s<k>.<ext>`. Seeds: the
    item's seed or `base_seed` + index (None when both are None), plus k·SEED_STRIDE for video k."""
    records = []
    for i, it in enumerate(items):
        base = it["seed"] if it.get("seed") is not None else (None if base_seed is None else base_seed + i)
        n = seeds
        if n is None:  # auto: one plain file, else the numbered ones
            if videos_dir is None or _find_video(videos_dir, it["id"]) is not None:
                n = 1
            else:
                pat = re.compile(rf"^{re.escape(it['id'])}_s(\d+)$")
                ks = sorted(
                    int(m.group(1))
                    for p in videos_dir.glob(f"{_glob_escape(it['id'])}_s*")
                    if p.suffix.lower() in VIDEO_EXTENSIONS and (m := pat.match(p.stem))
                )
                n = max(ks) + 1 if ks else 1
        for k in range(n):
            vid = it["id"] if n == 1 else f"{it['id']}_s{k}"
            rec = {
                "id": vid,
                "prompt_id": it["id"],
                "prompt": it["prompt"],
                "seed": None if base is None else base + k * SEED_STRIDE,
                "video": None,
            }
            if videos_dir is not None:
                found = _find_video(videos_dir, vid)
                rec["video"] = str(found) if found else str(videos_dir / f"{vid}.mp4")
            records.append(rec)
    return records


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# --------------------------------------------------------------------------------------------------- rewards


def load_reward_spec(names: str | Sequence[str] | None, config: str | os.PathLike | None) -> dict[str, Any]:
    """`--rewards` + `--reward-config` → the spec `build_rewards` takes (name → weight or options dict)."""
    cfg: dict[str, Any] = {}
    if config:
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"reward config {path} does not exist")
        import yaml

        data = yaml.safe_load(path.read_text()) or {}  # YAML is a superset of JSON
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


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _apply(reward: Any, videos: torch.Tensor, prompts: list[str]) -> list[tuple[float | None, dict] | str]:
    """A reward on a batch → per video (score, components) or an error message; a failing batch is retried one
    video at a time so that one bad video does not fail the others."""
    try:
        out = reward(videos, prompts)
        comps = {k: v.tolist() for k, v in out.components.items()}
        return [(_finite(s), {k: _finite(v[i]) for k, v in comps.items()}) for i, s in enumerate(out.score.tolist())]
    except Exception as e:  # noqa: BLE001 - recorded per video, the run goes on
        if len(prompts) == 1:
            return [_one_line(e)]
        results: list = []
        for i in range(len(prompts)):
            results += _apply(reward, videos[i : i + 1], prompts[i : i + 1])
        return results


def _load_video(path: str | None) -> tuple[torch.Tensor, float]:
    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"video file {path} not found")
    info = probe_video(path)
    return read_video(path), info.fps


def score_videos(
    records: list[dict[str, Any]],
    rewards: Any,
    *,
    batch_size: int = 8,
    thumbs_dir: Path | None = None,
    gif_size: int = 128,
    gif_frames: int = 16,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Read each record's `video`, score it with every reward of `rewards` (a `WeightedReward`) and fill in, in
    place: `status` ("ok", "missing", "unreadable", "reward_error"), `error`, `scores` {reward: value},
    `components` {reward: {component: value}} and `total` (the weighted sum; None unless every reward scored).
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
            rec["total"] = None if None in values else sum(weights[n] * v for n, v in zip(names, values))
        batch.clear()

    bar = tqdm(records, desc="scoring", unit="video", disable=not progress)
    for rec in bar:
        rec.update(status="pending", error="", scores={}, components={}, total=None)
        try:
            video, fps = _load_video(rec.get("video"))
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
            (thumbs_dir / f"{rec['id']}.gif").write_bytes(make_gif(video, fps, size=gif_size, frames=gif_frames))
        rec["errors"] = []
        if batch and (len(batch) >= batch_size or batch[0][1].shape != video.shape):
            flush()
        batch.append((rec, video))
    flush()
    return records


# ------------------------------------------------------------------------------------------------ generation


def generate_videos(
    model: str,
    records: list[dict[str, Any]],
    videos_dir: Path,
    *,
    lora: str | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    shift: float | None = None,
    fps: float | None = None,
    negative_prompt: str | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample every record's video (prompt, seed) with vidpost's sampler and write `<videos_dir>/<id>.mp4`
    (setting `record["video"]`); sizes and steps default to the model's `vidpost.json`, else the Wan recipe, as in
    `vidpost generate`. Returns the generation settings."""
    from vidpost.models import load, resolve_model_path
    from vidpost.models.sampling import initial_noise, sample
    from vidpost.pipelines.generate import resolve_settings

    model_dir = resolve_model_path(model)
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    t0 = time.time()
    adapter = load(model_dir, dtype=dtype, device=device, lora=lora)
    ns = SimpleNamespace(
        num_frames=num_frames, height=height, width=width, steps=steps, guidance=guidance, shift=shift, fps=fps
    )
    settings = resolve_settings(ns, adapter, model_dir)
    fps = settings.pop("fps")
    load_s = time.time() - t0
    shape = adapter.latent_shape(1, settings["num_frames"], settings["height"], settings["width"])
    videos_dir.mkdir(parents=True, exist_ok=True)
    t1 = time.time()
    starts = range(0, len(records), batch_size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress):
        chunk = records[start : start + batch_size]
        noise = torch.cat([initial_noise(shape, seed=r["seed"], device=adapter.device) for r in chunk])
        out = sample(
            adapter,
            [r["prompt"] for r in chunk],
            **settings,
            seed=0,
            negative_prompt=negative_prompt,
            latents=noise,
        )
        for rec, video in zip(chunk, out.float().cpu()):
            rec["video"] = str(write_video(videos_dir / f"{rec['id']}.mp4", video, fps=fps))
    info = {
        "model": str(model),
        "model_dir": str(model_dir),
        "lora": None if lora is None else str(lora),
        "family": adapter.family,
        **settings,
        "fps": fps,
        "negative_prompt": negative_prompt,
        "batch_size": batch_size,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "load_seconds": round(load_s, 2),
        "seconds_per_video": round((time.time() - t1) / max(1, len(records)), 3),
    }
    del adapter
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return info


# ------------------------------------------------------------------------------------------------ statistics

_Z975 = 1.959963984540054


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df (Abramowitz & Stegun 26.7.3–4, finite series)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # odd
        if df == 1:
            return 2 * theta / math.pi
        term, total = 1.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided `level` critical value of Student's t with `df` degrees of freedom (t(0.975, df) for 95%):
    exact (bisection on the closed-form CDF) up to df = 200, the Cornish–Fisher expansion beyond (error < 1e-6)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df > 200:
        if level != 0.95:
            raise ValueError("t_quantile: only level 0.95 is supported for df > 200")
        z, v = _Z975, float(df)
        return (
            z
            + (z**3 + z) / (4 * v)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
        )
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < level:
        hi *= 2
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, df) < level else (lo, mid)
    return 0.5 * (lo + hi)


def wilson(k: float, n: int, z: float = _Z975) -> tuple[float, float]:
    """95% Wilson score interval for a rate k / n."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / d
    lo, hi = c - h, c + h
    return (0.0 if lo < 1e-12 else lo), (1.0 if hi > 1 - 1e-12 else hi)


def stats(values: Sequence[float | None]) -> dict[str, Any]:
    """n, mean, std (ddof 1), sem, 95% t-interval `ci95`, median, min, max; `binary` and `wilson95` when every
    value is 0 or 1. Nones and non-finite values are left out."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "sem": None, "ci95": None, "median": None, "min": None,
                "max": None, "binary": False}  # fmt: skip
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    sem = std / math.sqrt(n)
    half = t_quantile(n - 1) * sem if n > 1 else math.nan
    out = {
        "n": n,
        "mean": mean,
        "std": std,
        "sem": sem,
        "ci95": [mean - half, mean + half] if n > 1 else None,
        "median": float(np.median(x)),
        "min": float(x.min()),
        "max": float(x.max()),
        "binary": bool(np.all((x == 0) | (x == 1))),
    }
    if out["binary"]:
        out["wilson95"] = list(wilson(float(x.sum()), n))
    return out


def reward_names(records: list[dict[str, Any]], weights: dict[str, float] | None = None) -> list[str]:
    names = list(weights or {})
    for rec in records:
        names += [n for n in rec.get("scores", {}) if n not in names]
    return names


def component_names(records: list[dict[str, Any]], names: list[str]) -> list[str]:
    """`<reward>/<component>` in first-seen order, grouped by reward."""
    out = []
    for name in names:
        for rec in records:
            out += [f"{name}/{c}" for c in rec.get("components", {}).get(name, {}) if f"{name}/{c}" not in out]
    return out


def _component(rec: dict[str, Any], key: str) -> float | None:
    name, _, comp = key.partition("/")
    return rec.get("components", {}).get(name, {}).get(comp)


def summarise(records: list[dict[str, Any]], weights: dict[str, float]) -> dict[str, Any]:
    """Statistics per reward (`rewards`), of the weighted `total` and per component (`components`), over the
    videos that have the value; counts and the list of failures."""
    names = reward_names(records, weights)
    failures = [
        {k: r.get(k) for k in ("id", "prompt_id", "prompt", "video", "status", "error")}
        for r in records
        if r.get("status") != "ok"
    ]
    return {
        "n_videos": len(records),
        "n_ok": sum(r.get("status") == "ok" for r in records),
        "n_failed": len(failures),
        "n_prompts": len({r["prompt_id"] for r in records}),
        "weights": dict(weights),
        "ci_method": CI_METHOD,
        "rewards": {n: stats([r.get("scores", {}).get(n) for r in records]) for n in names},
        "total": stats([r.get("total") for r in records]),
        "components": {c: stats([_component(r, c) for r in records]) for c in component_names(records, names)},
        "failures": failures,
    }


def compare_runs(
    records: list[dict[str, Any]],
    other: list[dict[str, Any]],
    names: Sequence[str],
    *,
    include_total: bool = True,
) -> dict[str, Any]:
    """Join two runs' records on video id; per reward (and `total`), over the pairs both scored: mean of this,
    of other, `delta` = mean paired difference (this − other) with `delta_ci95` (t), wins / ties / losses and
    `win_rate` = (wins + ties / 2) / n. Ties: equal to 1e-9 relative."""
    mine = {r["id"]: r for r in records}
    theirs = {r["id"]: r for r in other}
    common = [i for i in mine if i in theirs]
    keys = list(names) + (["total"] if include_total else [])
    result: dict[str, Any] = {
        "method": COMPARE_METHOD,
        "n_this": len(mine),
        "n_other": len(theirs),
        "n_common": len(common),
        "only_this": [i for i in mine if i not in theirs],
        "only_other": [i for i in theirs if i not in mine],
        "prompt_mismatch": [i for i in common if mine[i].get("prompt") != theirs[i].get("prompt")],
        "rewards": {},
    }

    def value(rec: dict, key: str) -> float | None:
        return _finite(rec.get("total")) if key == "total" else _finite(rec.get("scores", {}).get(key))

    for key in keys:
        pairs = [
            (a, b)
            for i in common
            if (a := value(mine[i], key)) is not None and (b := value(theirs[i], key)) is not None
        ]
        n = len(pairs)
        if n == 0:
            result["rewards"][key] = {"n": 0}
            continue
        a = np.array([p[0] for p in pairs])
        b = np.array([p[1] for p in pairs])
        ties = sum(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in pairs)
        wins = int(sum(x > y and not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in pairs))
        d = stats((a - b).tolist())
        result["rewards"][key] = {
            "n": n,
            "mean_this": float(a.mean()),
            "mean_other": float(b.mean()),
            "delta": d["mean"],
            "delta_std": d["std"],
            "delta_ci95": d["ci95"],
            "wins": wins,
            "ties": int(ties),
            "losses": n - wins - int(ties),
            "win_rate": (wins + 0.5 * ties) / n,
        }
    return result


# --------------------------------------------------------------------------------------------------- writing


def _rel(path: str | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return os.path.relpath(Path(path).resolve(), root.resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _dump(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_scores(out: Path, records: list[dict[str, Any]], weights: dict[str, float]) -> None:
    """`scores.json` (the records, video paths relative to `out`) and `scores.csv` (one row per video: id,
    prompt_id, prompt, seed, status, error, video, total, then each reward and its `<reward>/<component>`s)."""
    names = reward_names(records, weights)
    comps = component_names(records, names)
    rows = []
    for rec in records:
        row = {k: rec.get(k) for k in ("id", "prompt_id", "prompt", "seed", "status", "error")}
        row["video"] = _rel(rec.get("video"), out)
        row |= {"total": rec.get("total"), "scores": rec.get("scores", {}), "components": rec.get("components", {})}
        rows.append(row)
    _dump(out / "scores.json", {"weights": weights, "records": rows})
    columns = ["id", "prompt_id", "prompt", "seed", "status", "error", "video", "total"]
    for name in names:
        columns += [name] + [c for c in comps if c.startswith(f"{name}/")]
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            cells = []
            for col in columns:
                if col in names:
                    v = row["scores"].get(col)
                elif "/" in col and col.split("/", 1)[0] in names:
                    v = _component(row, col)
                else:
                    v = row.get(col)
                cells.append("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
            w.writerow(cells)


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A previous eval output folder: `{dir, records, weights, summary}` (video paths made absolute)."""
    run_dir = Path(run_dir)
    f = run_dir / "scores.json"
    if not f.is_file():
        raise ValueError(f"{run_dir} is not a vidpost eval output folder (no scores.json)")
    data = json.loads(f.read_text())
    records = data["records"]
    for rec in records:
        if rec.get("video") and not Path(rec["video"]).is_absolute():
            rec["video"] = str((run_dir / rec["video"]).resolve())
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    return {"dir": run_dir, "records": records, "weights": data.get("weights", {}), "summary": summary}


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.3e}"
    return str(x)


def _ci(ci: Sequence[float] | None) -> str:
    return "–" if not ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def summary_rows(
    by_name: dict[str, dict[str, Any]], weights: dict[str, float] | None = None, total: dict[str, Any] | None = None
) -> list[dict[str, str]]:
    """Formatted table rows of `stats` per name (+ a `total` row when given)."""
    rows = []
    entries = list(by_name.items()) + ([("total", total)] if total else [])
    for name, s in entries:
        rows.append(
            {
                "reward": name,
                "weight": _fmt((weights or {}).get(name)) if weights and name in weights else "",
                "n": str(s["n"]),
                "mean": _fmt(s["mean"]),
                "ci95": _ci(s["ci95"]),
                "std": _fmt(s["std"]),
                "median": _fmt(s["median"]),
                "min": _fmt(s["min"]),
                "max": _fmt(s["max"]),
                "wilson95": _ci(s.get("wilson95")),
            }
        )
    return rows


def _summary_table_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    weights = summary["weights"]
    show_total = len(summary["rewards"]) > 1 or any(w != 1 for w in weights.values())
    return summary_rows(summary["rewards"], weights, summary["total"] if show_total else None)


def compare_rows(comparison: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, c in comparison["rewards"].items():
        if not c["n"]:
            rows.append({"reward": name, "n": "0"})
            continue
        rows.append(
            {
                "reward": name,
                "n": str(c["n"]),
                "this": _fmt(c["mean_this"]),
                "other": _fmt(c["mean_other"]),
                "delta": f"{c['delta']:+.4g}",
                "ci95": _ci(c["delta_ci95"]),
                "win_rate": f"{c['win_rate']:.3f}",
                "wtl": f"{c['wins']}/{c['ties']}/{c['losses']}",
                "sign": "pos"
                if c["delta"] > 0 and c["delta_ci95"] and c["delta_ci95"][0] > 0
                else "neg"
                if c["delta"] < 0 and c["delta_ci95"] and c["delta_ci95"][1] < 0
                else "",
            }  # fmt: skip
        )
    return rows


def summary_markdown(summary: dict[str, Any], comparison: dict[str, Any] | None = None, other: str = "") -> str:
    lines = [
        f"{summary['n_videos']} videos ({summary['n_prompts']} prompts): {summary['n_ok']} scored, "
        f"{summary['n_failed']} failed.",
        "",
        "| reward | weight | n | mean | 95% CI (t) | std | median | min | max | Wilson 95% |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _summary_table_rows(summary):
        lines.append(
            f"| {r['reward']} | {r['weight']} | {r['n']} | **{r['mean']}** | {r['ci95']} | {r['std']} | "
            f"{r['median']} | {r['min']} | {r['max']} | {r['wilson95']} |"
        )
    lines += ["", f"CI: {summary['ci_method']}."]
    if summary["failures"]:
        lines += ["", "## Failures", "", "| id | status | error |", "|---|---|---|"]
        lines += [f"| {f['id']} | {f['status']} | {f['error']} |".replace("\n", " ") for f in summary["failures"]]
    if comparison is not None:
        lines += ["", f"## Compared with {other}", "", compare_markdown(comparison)]
    return "\n".join(lines) + "\n"


def compare_markdown(comparison: dict[str, Any]) -> str:
    lines = [
        f"{comparison['n_common']} videos in both runs ({len(comparison['only_this'])} only in this, "
        f"{len(comparison['only_other'])} only in the other).",
        "",
        "| reward | pairs | this | other | Δ (this − other) | 95% CI | win rate | W/T/L |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in compare_rows(comparison):
        if r["n"] == "0":
            lines.append(f"| {r['reward']} | 0 | – | – | – | – | – | – |")
        else:
            lines.append(
                f"| {r['reward']} | {r['n']} | {r['this']} | {r['other']} | **{r['delta']}** | {r['ci95']} | "
                f"{r['win_rate']} | {r['wtl']} |"
            )
    lines += ["", f"Method: {comparison['method']}."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- plots


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def make_plots(
    out: Path,
    records: list[dict[str, Any]],
    names: Sequence[str],
    *,
    other: list[dict[str, Any]] | None = None,
    labels: tuple[str, str] = ("this", "other"),
) -> list[Path]:
    """`plots/hist_<reward>.png` (with the other run overlaid when given), `plots/box.png` (one panel per reward)
    and with `other` `plots/paired.png` (this vs other per video). Returns the files, in report order."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plots = out / "plots"
    if plots.exists():
        for f in plots.glob("*.png"):
            f.unlink()
    plots.mkdir(parents=True, exist_ok=True)

    def vals(recs: list[dict], name: str) -> list[float]:
        return [v for r in recs if (v := _finite(r.get("scores", {}).get(name))) is not None]

    files = []
    for name in names:
        a = vals(records, name)
        if not a:
            continue
        fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=90)
        b = vals(other, name) if other is not None else []
        lo, hi = min(a + b), max(a + b)
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 21)
        ax.hist(a, bins=bins, alpha=0.65, label=f"{labels[0]} (n={len(a)})", color="#3b6fb6")
        ax.axvline(float(np.mean(a)), color="#3b6fb6", ls="--", lw=1)
        if b:
            ax.hist(b, bins=bins, alpha=0.5, label=f"{labels[1]} (n={len(b)})", color="#d9822b")
            ax.axvline(float(np.mean(b)), color="#d9822b", ls="--", lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("videos", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
        fig.tight_layout()
        f = plots / f"hist_{_safe(name)}.png"
        fig.savefig(f)
        plt.close(fig)
        files.append(f)

    present = [n for n in names if vals(records, n)]
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(1.2 + 1.9 * len(present), 2.9), dpi=90, squeeze=False)
        rng = np.random.default_rng(0)
        for ax, name in zip(axes[0], present):
            data = [vals(records, name)] + ([vals(other, name)] if other is not None else [])
            data = [d if d else [math.nan] for d in data]
            ax.boxplot(data, widths=0.5, showfliers=False)
            for j, d in enumerate(data, 1):
                ax.scatter(j + rng.uniform(-0.12, 0.12, len(d)), d, s=6, alpha=0.6, color="k")
            ax.set_xticks(range(1, len(data) + 1), list(labels[: len(data)]), fontsize=7)
            ax.set_title(name, fontsize=9)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        f = plots / "box.png"
        fig.savefig(f)
        plt.close(fig)
        files.append(f)

    if other is not None:
        theirs = {r["id"]: r for r in other}
        panels = []
        for name in present:
            pairs = [
                (a, b)
                for r in records
                if r["id"] in theirs
                and (a := _finite(r.get("scores", {}).get(name))) is not None
                and (b := _finite(theirs[r["id"]].get("scores", {}).get(name))) is not None
            ]
            if pairs:
                panels.append((name, pairs))
        if panels:
            fig, axes = plt.subplots(1, len(panels), figsize=(0.6 + 2.6 * len(panels), 2.8), dpi=90, squeeze=False)
            for ax, (name, pairs) in zip(axes[0], panels):
                x, y = np.array(pairs).T
                ax.scatter(y, x, s=8, alpha=0.7)
                lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
                ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
                ax.set_xlabel(labels[1], fontsize=7)
                ax.set_ylabel(labels[0], fontsize=7)
                ax.set_title(name, fontsize=9)
                ax.tick_params(labelsize=7)
            fig.tight_layout()
            f = plots / "paired.png"
            fig.savefig(f)
            plt.close(fig)
            files.append(f)
    return files


# ------------------------------------------------------------------------------------------------------ GIFs


def make_gif(video: torch.Tensor, fps: float = 8.0, *, size: int = 128, frames: int = 16) -> bytes:
    """A small looping GIF of a float [3, T, H, W] video: at most `frames` evenly spaced frames, the longer side
    scaled to `size` pixels, played over the clip's real duration."""
    from PIL import Image

    t = video.shape[1]
    n = min(t, max(1, frames))
    idx = [round(k * (t - 1) / (n - 1)) for k in range(n)] if n > 1 else [0]
    h, w = video.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    arr = (video[:, idx].clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 3, 0).numpy()
    images = [Image.fromarray(a).resize((nw, nh), resample) for a in arr]
    images = [im.convert("P", palette=Image.Palette.ADAPTIVE, colors=128) for im in images]
    duration = max(20, round(1000 * t / (max(fps, 1e-3) * n) / 10) * 10)
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buf.getvalue()


def _thumb_uri(run_dir: Path, rec: dict[str, Any], size: int, frames: int) -> str | None:
    """data: URI of `<run_dir>/thumbs/<id>.gif`, made from the video when the thumbnail is missing."""
    f = run_dir / "thumbs" / f"{rec['id']}.gif"
    if f.is_file():
        data = f.read_bytes()
    elif rec.get("status") == "ok" and rec.get("video"):
        try:
            video, fps = _load_video(rec["video"])
        except Exception:  # noqa: BLE001 - the report just shows no thumbnail
            return None
        data = make_gif(video, fps, size=size, frames=frames)
    else:
        return None
    return "data:image/gif;base64," + base64.b64encode(data).decode()


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


# ---------------------------------------------------------------------------------------------------- report

_TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:1em 2em;
color:#1d2430;background:#fafbfc}
h1{font-size:1.5em;margin:.3em 0}h2{border-bottom:1px solid #d6dbe2;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1em;margin:.2em 0 .5em}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
nav a{margin-right:1em}.meta{color:#4a5567}.meta td{padding:1px 10px 1px 0;vertical-align:top}
table.stats{border-collapse:collapse;margin:.5em 0;background:#fff}
table.stats th,table.stats td{border:1px solid #d6dbe2;padding:3px 8px;text-align:right}
table.stats th{background:#eef1f5}table.stats td:first-child,table.stats th:first-child{text-align:left}
.pos{color:#1a7f37;font-weight:600}.neg{color:#c62828;font-weight:600}.note{color:#5c6778;font-size:.9em}
.plots img{margin:4px;border:1px solid #d6dbe2;background:#fff;max-width:100%}
.prompt{background:#fff;border:1px solid #d6dbe2;border-radius:6px;padding:.6em .8em;margin:.7em 0}
.prompt .text{font-weight:500}.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:.4em}
.card{border:1px solid #e3e7ec;border-radius:5px;padding:6px;background:#fcfcfd}
.card.failed{border-color:#e0a0a0;background:#fff6f6}.pair{display:flex;gap:6px}
.pair figure{margin:0;text-align:center}.pair figcaption{font-size:.8em;color:#5c6778}
img.thumb{display:block;image-rendering:pixelated;border:1px solid #ccd;max-width:256px}
.placeholder{width:128px;height:96px;display:flex;align-items:center;justify-content:center;
background:#eee;color:#a33;font-size:.85em;border:1px dashed #c99}
table.scores{border-collapse:collapse;font-size:.82em;margin-top:4px}
table.scores td,table.scores th{padding:0 6px 0 0;text-align:right}table.scores td:first-child{text-align:left}
.err{color:#b42318;font-size:.82em;max-width:420px;word-break:break-word}
details summary{cursor:pointer;color:#3b6fb6}
</style></head><body>
<h1>{{ title }}</h1>
<nav><a href="#summary">Summary</a>{% if comparison %}<a href="#compare">Comparison</a>{% endif %}<a href="#plots">Plots</a>
<a href="#videos">Videos</a><a href="#failures">Failures ({{ summary.n_failed }})</a></nav>
<table class="meta">{% for k, v in meta %}<tr><td>{{ k }}</td><td class="mono">{{ v }}</td></tr>{% endfor %}</table>

<h2 id="summary">Summary</h2>
<p>{{ summary.n_videos }} videos for {{ summary.n_prompts }} prompts: {{ summary.n_ok }} scored,
{{ summary.n_failed }} failed.</p>
<table class="stats"><tr><th>reward</th><th>weight</th><th>n</th><th>mean</th><th>95% CI (t)</th><th>std</th>
<th>median</th><th>min</th><th>max</th><th>Wilson 95%</th></tr>
{% for r in summary_rows %}<tr><td>{{ r.reward }}</td><td>{{ r.weight }}</td><td>{{ r.n }}</td><td><b>{{ r.mean }}</b></td>
<td>{{ r.ci95 }}</td><td>{{ r.std }}</td><td>{{ r.median }}</td><td>{{ r.min }}</td><td>{{ r.max }}</td>
<td>{{ r.wilson95 }}</td></tr>{% endfor %}</table>
<p class="note">{{ summary.ci_method }}.</p>
{% if component_rows %}<details><summary>Components ({{ component_rows|length }})</summary>
<table class="stats"><tr><th>component</th><th>n</th><th>mean</th><th>95% CI (t)</th><th>std</th><th>min</th><th>max</th>
<th>Wilson 95%</th></tr>{% for r in component_rows %}<tr><td>{{ r.reward }}</td><td>{{ r.n }}</td><td>{{ r.mean }}</td>
<td>{{ r.ci95 }}</td><td>{{ r.std }}</td><td>{{ r.min }}</td><td>{{ r.max }}</td><td>{{ r.wilson95 }}</td></tr>
{% endfor %}</table></details>{% endif %}

{% if comparison %}<h2 id="compare">Comparison: {{ labels[0] }} vs {{ labels[1] }}</h2>
<p>Other run: <code>{{ other_dir }}</code>. {{ comparison.n_common }} videos in both runs
({{ comparison.only_this|length }} only in this run, {{ comparison.only_other|length }} only in the other).</p>
<table class="stats"><tr><th>reward</th><th>pairs</th><th>{{ labels[0] }}</th><th>{{ labels[1] }}</th>
<th>Δ ({{ labels[0] }} − {{ labels[1] }})</th><th>95% CI</th><th>win rate</th><th>W/T/L</th></tr>
{% for r in compare_rows %}{% if r.n == "0" %}<tr><td>{{ r.reward }}</td><td>0</td><td colspan="6">no pairs</td></tr>
{% else %}<tr><td>{{ r.reward }}</td><td>{{ r.n }}</td><td>{{ r.this }}</td><td>{{ r.other }}</td>
<td class="{{ r.sign }}">{{ r.delta }}</td><td>{{ r.ci95 }}</td><td>{{ r.win_rate }}</td><td>{{ r.wtl }}</td></tr>
{% endif %}{% endfor %}</table>
<p class="note">{{ comparison.method }}.</p>
{% if comparison.only_other %}<p class="note">Only in {{ labels[1] }}: {{ comparison.only_other|join(", ") }}</p>{% endif %}
{% if comparison.only_this %}<p class="note">Only in {{ labels[0] }}: {{ comparison.only_this|join(", ") }}</p>{% endif %}
{% if comparison.prompt_mismatch %}<p class="neg">Different prompts under the same id:
{{ comparison.prompt_mismatch|join(", ") }}</p>{% endif %}{% endif %}

<h2 id="plots">Plots</h2>
<div class="plots">{% for name, uri in plots %}<img alt="{{ name }}" title="{{ name }}" src="{{ uri }}">{% endfor %}</div>

<h2 id="videos">Videos</h2>
{% for g in groups %}<div class="prompt" id="p-{{ g.id }}"><h3><span class="mono">{{ g.id }}</span> —
<span class="text">{{ g.prompt }}</span></h3><div class="cards">
{% for v in g.videos %}<div class="card{% if v.status != 'ok' %} failed{% endif %}" id="v-{{ v.id }}"><div class="pair">
{% for side in v.sides %}<figure>{% if side.uri %}<img class="thumb" data-id="{{ v.id }}" alt="{{ v.id }}" src="{{ side.uri }}">
{% else %}<div class="placeholder">{{ side.status }}</div>{% endif %}
{% if v.sides|length > 1 %}<figcaption>{{ side.label }}</figcaption>{% endif %}</figure>{% endfor %}</div>
<div class="mono">{{ v.id }}{% if v.seed is not none %} · seed {{ v.seed }}{% endif %}</div>
{% if v.error %}<div class="err">{{ v.status }}: {{ v.error }}</div>{% endif %}
<table class="scores">{% if v.sides|length > 1 %}<tr><th></th><th>{{ labels[0] }}</th><th>{{ labels[1] }}</th><th>Δ</th></tr>{% endif %}
{% for s in v.scores %}<tr><td>{{ s.name }}</td><td>{{ s.this }}</td>{% if v.sides|length > 1 %}<td>{{ s.other }}</td>
<td class="{{ s.sign }}">{{ s.delta }}</td>{% endif %}</tr>{% endfor %}</table></div>
{% endfor %}</div></div>{% endfor %}

<h2 id="failures">Failures ({{ summary.n_failed }})</h2>
{% if summary.failures %}<table class="stats"><tr><th>id</th><th>prompt</th><th>status</th><th>error</th></tr>
{% for f in summary.failures %}<tr><td class="mono"><a href="#v-{{ f.id }}">{{ f.id }}</a></td>
<td style="text-align:left">{{ f.prompt }}</td><td>{{ f.status }}</td><td class="err" style="text-align:left">{{ f.error }}</td></tr>
{% endfor %}</table>{% else %}<p>None: every video was read and scored.</p>{% endif %}
<p class="note">Generated by <code>vidpost eval</code> on {{ created }}.</p>
</body></html>
"""


def _labels(out: Path, other_dir: Path | None) -> tuple[str, str]:
    if other_dir is None:
        return ("this", "other")
    a, b = out.resolve().name or "this", other_dir.resolve().name or "other"
    return (a, b) if a != b else ("this", "other")


def write_report(
    out: str | os.PathLike,
    *,
    title: str | None = None,
    gif_size: int = 128,
    gif_frames: int = 16,
) -> Path:
    """Write `<out>/report.html` from the files of an eval output folder (`scores.json`, `summary.json`,
    `compare.json` and the other run's folder it names, `plots/`, `thumbs/`); every image is embedded."""
    import jinja2

    out = Path(out)
    run = load_run(out)
    records, summary = run["records"], run["summary"]
    comparison = json.loads((out / "compare.json").read_text()) if (out / "compare.json").is_file() else None
    other_dir = Path(comparison["other_dir"]) if comparison else None
    try:
        other = {r["id"]: r for r in load_run(other_dir)["records"]} if other_dir else {}
    except (ValueError, OSError):  # the other run has moved since: no side-by-side videos
        other = {}
    labels = _labels(out, other_dir)
    names = reward_names(records, run["weights"])
    show_total = len(names) > 1 or any(w != 1 for w in run["weights"].values())
    rows_keys = names + (["total"] if show_total else [])

    def value(rec: dict | None, key: str) -> float | None:
        if rec is None:
            return None
        return _finite(rec.get("total")) if key == "total" else _finite(rec.get("scores", {}).get(key))

    groups: dict[str, dict] = {}
    for rec in records:
        g = groups.setdefault(rec["prompt_id"], {"id": rec["prompt_id"], "prompt": rec["prompt"], "videos": []})
        sides = [{"label": labels[0], "status": rec["status"], "uri": _thumb_uri(out, rec, gif_size, gif_frames)}]
        theirs = other.get(rec["id"]) if comparison else None
        if comparison:
            sides.append(
                {
                    "label": labels[1],
                    "status": theirs["status"] if theirs else "not in other run",
                    "uri": _thumb_uri(other_dir, theirs, gif_size, gif_frames) if theirs else None,
                }
            )
        scores = []
        for key in rows_keys:
            a, b = value(rec, key), value(theirs, key)
            d = None if a is None or b is None else a - b
            sign = "" if d is None or abs(d) <= 1e-12 else ("pos" if d > 0 else "neg")
            scores.append(
                {
                    "name": key,
                    "this": _fmt(a),
                    "other": _fmt(b),
                    "delta": "–" if d is None else f"{d:+.3g}",
                    "sign": sign,
                }
            )
        g["videos"].append({**rec, "sides": sides, "scores": scores})

    run_info = summary.get("run", {})
    meta = [(k, v) for k, v in run_info.items() if v not in (None, "", [], {})]
    component_rows = summary_rows(summary.get("components", {}))
    order = [f"hist_{_safe(n)}" for n in names] + ["box", "paired"]
    files = sorted(
        (out / "plots").glob("*.png"), key=lambda p: (order.index(p.stem) if p.stem in order else 99, p.stem)
    )
    plots = [(p.stem, _png_uri(p)) for p in files]
    html = (
        jinja2.Environment(autoescape=True, trim_blocks=False)
        .from_string(_TEMPLATE)
        .render(
            title=title or summary.get("title") or f"vidpost eval — {out.resolve().name}",
            meta=meta,
            summary=summary,
            summary_rows=_summary_table_rows(summary),
            component_rows=component_rows,
            comparison=comparison,
            compare_rows=compare_rows(comparison) if comparison else [],
            other_dir=str(other_dir) if other_dir else "",
            labels=labels,
            plots=plots,
            groups=list(groups.values()),
            created=_dt.datetime.now().isoformat(timespec="seconds"),
        )
    )
    path = out / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vidpost eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
    )
    p.add_argument("--prompts", help=f"prompts file (.txt, .jsonl, .json) or '{SHAPES_HELDOUT}'")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--videos", type=Path, help="folder of videos named <id>.mp4 to score")
    src.add_argument("--model", help="model folder or preset to generate the videos with")
    p.add_argument("--lora", help="LoRA folder applied to --model")
    p.add_argument("--rewards", help="comma-separated reward names, e.g. verifier,temporal,motion")
    p.add_argument("--reward-config", help="YAML/JSON: reward name → weight or {weight, path, ...}")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--compare", type=Path, help="a previous eval output folder to compare with")
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument("--title", help="report title")
    g = p.add_argument_group("generation (--model)")
    g.add_argument("--steps", type=int, help="denoising steps (model default when omitted)")
    g.add_argument("--guidance", type=float, help="guidance scale (model default when omitted)")
    g.add_argument("--shift", type=float, help="flow-matching shift (model default when omitted)")
    g.add_argument("--frames", "--num-frames", dest="num_frames", type=int, help="frames per video")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--fps", type=float, help="frame rate of the written mp4s")
    g.add_argument("--seed", type=int, default=0, help="base seed: prompt i without a seed of its own gets seed+i")
    g.add_argument("--seeds", type=int, help="videos per prompt (default 1; with --videos found from the files)")
    g.add_argument("--negative-prompt")
    g.add_argument("--batch-size", type=int, default=4, help="prompts sampled together")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    s = p.add_argument_group("scoring")
    s.add_argument("--score-batch-size", type=int, default=8, help="videos scored together")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--gif-size", type=int, default=128, help="longer side of the report's GIFs, pixels")
    s.add_argument("--gif-frames", type=int, default=16, help="frames in the report's GIFs")
    s.add_argument("--no-progress", action="store_true")
    return p


def _finish(
    args: argparse.Namespace, out: Path, records: list[dict], weights: dict[str, float], run_info: dict
) -> dict[str, Any]:
    """Write scores, summary, comparison, plots and the report for scored records."""
    summary = summarise(records, weights)
    summary["run"] = run_info
    if args.title:
        summary["title"] = args.title
    comparison, other = None, None
    if args.compare is not None:
        other_run = load_run(args.compare)
        other = other_run["records"]
        same_weights = dict(other_run["weights"]) == dict(weights)
        names = [n for n in reward_names(records, weights) if n in reward_names(other, other_run["weights"])]
        comparison = compare_runs(records, other, names, include_total=same_weights)
        comparison["other_dir"] = str(args.compare.resolve())
        _dump(out / "compare.json", comparison)
        (out / "compare.md").write_text(compare_markdown(comparison) + "\n")
    else:
        for f in ("compare.json", "compare.md"):
            (out / f).unlink(missing_ok=True)
    _dump(out / "summary.json", summary)
    (out / "summary.md").write_text(summary_markdown(summary, comparison, str(args.compare) if args.compare else ""))
    make_plots(out, records, reward_names(records, weights), other=other, labels=_labels(out, args.compare))
    report = write_report(out, title=args.title, gif_size=args.gif_size, gif_frames=args.gif_frames)
    print(summary_markdown(summary, comparison, str(args.compare) if args.compare else ""))
    print(f"report: {report}", file=sys.stderr)
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    progress = not args.no_progress
    if args.videos is None and args.model is None:  # re-summarise / re-compare an existing run
        if not (out / "scores.json").is_file():
            raise ValueError("give --videos DIR or --model PATH (or --out an existing eval folder to re-report)")
        prev = load_run(out)
        info = prev["summary"].get("run", {}) | {"re-reported": _dt.datetime.now().isoformat(timespec="seconds")}
        return _finish(args, out, prev["records"], prev["weights"], info)

    spec = load_reward_spec(args.rewards, args.reward_config)
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.videos is not None and not args.videos.is_dir():
        raise ValueError(f"--videos {args.videos} is not a folder")
    if args.prompts:
        items = load_prompts(args.prompts, args.limit)
    elif args.videos is not None:
        items = discover_videos(args.videos)[: args.limit] if args.limit else discover_videos(args.videos)
    else:
        raise ValueError("--model needs --prompts")

    from vidpost.rewards.base import build_rewards

    try:  # before generating: a bad reward path or a missing optional dependency fails fast
        rewards = build_rewards(spec, device=args.device)
    except ImportError as e:
        raise ValueError(f"cannot build the rewards {list(spec)}: {e}") from e
    if not args.prompts and any(getattr(r, "uses_prompts", True) for r in rewards.rewards.values()):
        print("warning: no --prompts: rewards that read the prompt score against an empty prompt", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    run_info: dict[str, Any] = {
        "prompts": args.prompts or f"(files in {args.videos})",
        "rewards": ", ".join(f"{n} ×{w:g}" for n, w in rewards.weights.items()),
        "reward_config": args.reward_config,
        "device": args.device,
        "command": "vidpost eval " + " ".join(getattr(args, "argv", [])),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    if args.videos is not None:
        records = make_records(items, seeds=args.seeds, base_seed=None, videos_dir=args.videos)
        run_info["videos"] = str(args.videos.resolve())
        seeds_out = [it["seed"] for it in items]
    else:
        records = make_records(items, seeds=args.seeds or 1, base_seed=args.seed)
        seeds_out = [it["seed"] if it["seed"] is not None else args.seed + i for i, it in enumerate(items)]
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        gen = generate_videos(
            args.model,
            records,
            out / "videos",
            lora=args.lora,
            num_frames=args.num_frames,
            height=args.height,
            width=args.width,
            steps=args.steps,
            guidance=args.guidance,
            shift=args.shift,
            fps=args.fps,
            negative_prompt=args.negative_prompt,
            batch_size=args.batch_size,
            device=args.device,
            dtype=dtypes[args.dtype] if args.dtype else None,
            progress=progress,
        )
        _dump(out / "generation.json", gen)
        run_info |= {k: gen[k] for k in ("model", "lora", "num_frames", "height", "width", "num_inference_steps")}
        run_info |= {"guidance_scale": gen["guidance_scale"], "shift": gen["shift"], "base_seed": args.seed}
        run_info["seconds_per_video (generation)"] = gen["seconds_per_video"]
    with open(out / "prompts.jsonl", "w") as f:  # re-usable as --prompts (ids, prompts, base seeds)
        for it, seed in zip(items, seeds_out):
            f.write(json.dumps({"id": it["id"], "prompt": it["prompt"], "seed": seed}, ensure_ascii=False) + "\n")
    thumbs = out / "thumbs"
    for stale in thumbs.glob("*.gif"):  # from an earlier run into the same folder
        stale.unlink()
    t0 = time.time()
    score_videos(
        records,
        rewards,
        batch_size=args.score_batch_size,
        thumbs_dir=thumbs,
        gif_size=args.gif_size,
        gif_frames=args.gif_frames,
        progress=progress,
    )
    run_info["seconds_per_video (scoring)"] = round((time.time() - t0) / max(1, len(records)), 3)
    write_scores(out, records, rewards.weights)
    return _finish(args, out, load_run(out)["records"], rewards.weights, run_info)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        run(args)
    except (ValueError, KeyError, FileNotFoundError) as e:  # user mistakes: bad paths, unknown reward, sizes
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
