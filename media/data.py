"""Training data: manifests of (video, caption), frame/size rules per family, bucketing, and the latent cache.

Manifest: a JSONL file (one object per line) or a CSV with a header, with at least `video` (a path, relative to
the manifest's folder or absolute) and a caption column (`caption` by default; any key can be chosen, e.g. the
Shapes world's `caption_noisy` or `prompt_user`). Optional per-row `fps` (sample at this rate) and `crop`
(`center` | `none`). A malformed line is an error naming the file and line; a row whose video cannot be read is
not: it is skipped, counted, and listed with the reason in a report file (`bad_videos.jsonl`).

Frame rule: Wan and HunyuanVideo generate 4k+1 frames; `valid_num_frames(n)` is the largest such count ≤ n.
Bucketing: `Bucket(num_frames, height, width)` entries; each clip goes to the bucket whose aspect ratio is
closest to its own and whose frame count it can fill; batches are drawn within a bucket.

Latent cache (`precompute`): VAE latents (posterior mode, normalised by the adapter) and text embeddings are
computed once and written as safetensors shards `shard_00000.safetensors` … with a JSON sidecar per shard; a
shard whose sidecar exists is skipped, so an interrupted precompute resumes where it stopped. The empty-prompt
embedding (for caption dropout / CFG training) is stored in `null_prompt.safetensors`. `LatentCache` reads the
shards back; training then needs neither the VAE nor the text encoder in memory.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from vidpost.media.video_io import VideoReadError, probe_video, read_video
from vidpost.outputs import atomic_file, write_json
from vidpost.seeding import epoch_generator


@dataclass(frozen=True)
class Bucket:
    num_frames: int
    height: int
    width: int

    @property
    def aspect(self) -> float:
        return self.width / self.height


def valid_num_frames(n: int, temporal_factor: int = 4) -> int:
    """Largest count of the form temporal_factor·k + 1 that is ≤ n (≥ 1)."""
    if n < 1:
        raise ValueError(f"need at least 1 frame, got {n}")
    return (n - 1) // temporal_factor * temporal_factor + 1


def read_manifest(path: str | Path, caption_key: str = "caption") -> list[dict[str, Any]]:
    """Rows of a JSONL/CSV manifest with `video` resolved to an absolute path and `caption` set from caption_key."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"manifest {path} does not exist")
    rows: list[dict[str, Any]] = []
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            for i, row in enumerate(csv.DictReader(f), start=2):
                rows.append(_check_row(dict(row), path, i, caption_key))
    else:
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            rows.append(_check_row(row, path, i, caption_key))
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    return rows


def _check_row(row: Any, path: Path, line: int, caption_key: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{line}: expected an object with 'video' and '{caption_key}'")
    for key in ("video", caption_key):
        if key not in row:
            raise ValueError(f"{path}:{line}: missing key '{key}' (keys: {sorted(row)})")
    video = Path(row["video"])
    out = dict(row)
    out["video"] = str(video if video.is_absolute() else (path.parent / video))
    out["caption"] = "" if row[caption_key] is None else str(row[caption_key])
    if out.get("fps") in ("", None):
        out.pop("fps", None)
    else:
        out["fps"] = float(out["fps"])
    return out


def choose_bucket(height: int, width: int, num_frames: int, buckets: list[Bucket]) -> Bucket | None:
    """Closest-aspect bucket (log ratio) among those the clip has enough frames for; None if none fits."""
    fitting = [b for b in buckets if b.num_frames <= num_frames]
    if not fitting:
        return None
    aspect = width / height
    best = min(abs(math.log(b.aspect / aspect)) for b in fitting)
    # Among equally close aspects prefer the longest clip.
    return max((b for b in fitting if abs(abs(math.log(b.aspect / aspect)) - best) < 1e-9), key=lambda b: b.num_frames)


def load_clip(row: dict[str, Any], bucket: Bucket) -> torch.Tensor:
    """Decode one manifest row to [3, T, H, W] in [0, 1] for `bucket` (raises VideoReadError on a bad file)."""
    return read_video(
        row["video"],
        num_frames=bucket.num_frames,
        fps=row.get("fps"),
        size=(bucket.height, bucket.width),
        crop=row.get("crop", "center"),
    )


class BadVideoLog:
    """Counts and lists unreadable videos in `report_path` (JSONL: video, reason)."""

    def __init__(self, report_path: Path | None):
        self.report_path = report_path
        self.count = 0
        self.entries: list[dict[str, str]] = []

    def add(self, video: str, reason: str) -> None:
        self.count += 1
        entry = {"video": video, "reason": reason}
        self.entries.append(entry)
        print(f"skipping unreadable video {video}: {reason}", file=sys.stderr)
        if self.report_path is not None:
            self.report_path.parent.mkdir(parents=True, exist_ok=True)
            with self.report_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")


def plan_buckets(
    rows: list[dict[str, Any]], buckets: list[Bucket], bad: BadVideoLog
) -> list[tuple[dict[str, Any], Bucket]]:
    """Probe every video once; assign a bucket; log unreadable or too-short files."""
    out = []
    for row in tqdm(rows, desc="probing videos", leave=False, disable=len(rows) < 200):
        try:
            info = probe_video(row["video"])
        except VideoReadError as e:
            bad.add(row["video"], e.reason)
            continue
        frames = info.num_frames
        if row.get("fps"):
            frames = int(info.num_frames * row["fps"] / info.fps)
        bucket = choose_bucket(info.height, info.width, frames, buckets)
        if bucket is None:
            bad.add(
                row["video"], f"too short: {frames} frames, shortest bucket needs {min(b.num_frames for b in buckets)}"
            )
            continue
        out.append((row, bucket))
    return out


# ---- latent cache ---------------------------------------------------------------------------------------------


def precompute(
    adapter: Any,
    rows: list[dict[str, Any]],
    buckets: list[Bucket],
    cache_dir: str | Path,
    *,
    shard_size: int = 64,
    batch_size: int = 8,
    extra_keys: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Encode latents + text embeddings into safetensors shards; resumable. Returns the summary dict.

    Shards group clips of one bucket. Shard i covers a fixed slice of the planned clips, so a rerun maps the same
    clips to the same shard names and skips the ones already written.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    bad = BadVideoLog(cache_dir / "bad_videos.jsonl")
    if bad.report_path.exists():
        bad.report_path.unlink()
    planned = plan_buckets(rows, buckets, bad)
    by_bucket: dict[Bucket, list[dict[str, Any]]] = {}
    for row, bucket in planned:
        by_bucket.setdefault(bucket, []).append(row)
    jobs = []
    for bucket, items in sorted(by_bucket.items(), key=lambda kv: (kv[0].num_frames, kv[0].height, kv[0].width)):
        for start in range(0, len(items), shard_size):
            jobs.append((bucket, items[start : start + shard_size]))
    null_file = cache_dir / "null_prompt.safetensors"
    if not null_file.exists():
        with atomic_file(null_file) as tmp:
            save_file(_embeds_to_tensors(adapter.encode_prompt([""]), ""), str(tmp))
    written = skipped = 0
    for i, (bucket, items) in enumerate(tqdm(jobs, desc="precompute shards")):
        shard = cache_dir / f"shard_{i:05d}.safetensors"
        meta_file = shard.with_suffix(".json")
        if shard.exists() and meta_file.exists():
            skipped += 1
            continue
        latents, captions, metas = [], [], []
        for start in range(0, len(items), batch_size):
            chunk, videos = [], []
            for row in items[start : start + batch_size]:
                try:
                    videos.append(load_clip(row, bucket))
                    chunk.append(row)
                except VideoReadError as e:
                    bad.add(row["video"], e.reason)
            if not videos:
                continue
            with torch.no_grad():
                latents.append(adapter.encode_video(torch.stack(videos).to(adapter.device)).cpu())
            captions += [r["caption"] for r in chunk]
            metas += [{k: r[k] for k in ("video", "caption", *extra_keys) if k in r} for r in chunk]
        if not latents:
            continue
        tensors = {"latents": torch.cat(latents).contiguous()}
        emb = adapter.encode_prompt(captions)
        tensors.update(_embeds_to_tensors(emb, "").items())
        with atomic_file(shard, what=f"the latent shard {shard.name}") as tmp:
            save_file(tensors, str(tmp))
        write_json(meta_file, {"bucket": bucket.__dict__, "items": metas}, indent=None)
        written += 1
    summary = {
        "clips": len(rows),
        "encoded": sum(len(json.loads(f.read_text())["items"]) for f in sorted(cache_dir.glob("shard_*.json"))),
        "bad_videos": bad.count,
        "shards_written": written,
        "shards_skipped": skipped,
    }
    write_json(cache_dir / "summary.json", summary)
    return summary


def _embeds_to_tensors(emb: Any, prefix: str) -> dict[str, torch.Tensor]:
    out = {prefix + "prompt_embeds": emb.embeds.float().cpu().contiguous()}
    if emb.mask is not None:
        out[prefix + "prompt_mask"] = emb.mask.float().cpu().contiguous()
    if emb.pooled is not None:
        out[prefix + "prompt_pooled"] = emb.pooled.float().cpu().contiguous()
    return out


class LatentCache:
    """All cached samples in memory, grouped by bucket: `latents[i]`, prompt embeddings, captions."""

    def __init__(self, cache_dir: str | Path):
        cache_dir = Path(cache_dir)
        shards = sorted(cache_dir.glob("shard_*.safetensors"))
        if not shards:
            raise ValueError(f"latent cache {cache_dir} has no shards; run `vidpost sft precompute` first")
        self.items: list[dict[str, Any]] = []
        self.latents: list[torch.Tensor] = []
        self.embeds: list[torch.Tensor] = []
        self.masks: list[torch.Tensor | None] = []
        self.pooled: list[torch.Tensor | None] = []
        self.bucket_of: list[int] = []
        self.buckets: list[Bucket] = []
        for shard in shards:
            meta_file = shard.with_suffix(".json")
            if not meta_file.exists():
                continue  # a shard being written by an interrupted precompute
            meta = json.loads(meta_file.read_text())
            t = load_file(str(shard))
            bucket = Bucket(**meta["bucket"])
            if bucket not in self.buckets:
                self.buckets.append(bucket)
            b = self.buckets.index(bucket)
            for j, item in enumerate(meta["items"]):
                self.items.append(item)
                self.latents.append(t["latents"][j])
                self.embeds.append(t["prompt_embeds"][j])
                self.masks.append(t["prompt_mask"][j] if "prompt_mask" in t else None)
                self.pooled.append(t["prompt_pooled"][j] if "prompt_pooled" in t else None)
                self.bucket_of.append(b)
        null = load_file(str(cache_dir / "null_prompt.safetensors"))
        self.null_embeds = null["prompt_embeds"][0]
        self.null_mask = null["prompt_mask"][0] if "prompt_mask" in null else None
        self.null_pooled = null["prompt_pooled"][0] if "prompt_pooled" in null else None

    def __len__(self) -> int:
        return len(self.items)

    def bucket_indices(self) -> list[list[int]]:
        groups: list[list[int]] = [[] for _ in self.buckets]
        for i, b in enumerate(self.bucket_of):
            groups[b].append(i)
        return groups


class StatefulBatchSampler:
    """Deterministic batches within buckets; its state (epoch, position) is saved in checkpoints.

    Each epoch shuffles every bucket's indices with a generator seeded by (seed, epoch), cuts them into batches
    of `batch_size` (dropping a ragged tail) and shuffles the batch order. The batches are *global*: the trainer
    slices each one across processes and micro-batches. Resuming from (epoch, position) reproduces the exact
    remaining sequence.
    """

    def __init__(self, groups: list[list[int]], batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.groups = [g for g in groups if g]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        if not self._epoch_batches(0):
            sizes = [len(g) for g in self.groups]
            raise ValueError(f"not enough samples for one global batch of {batch_size} (bucket sizes: {sizes})")

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        g = epoch_generator(self.seed, epoch)
        batches = []
        for group in self.groups:
            perm = [group[i] for i in torch.randperm(len(group), generator=g).tolist()]
            batches += [
                perm[i : i + self.batch_size] for i in range(0, len(perm) - self.batch_size + 1, self.batch_size)
            ]
        order = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            batches = self._epoch_batches(self.epoch)
            while self.position < len(batches):
                batch = batches[self.position]
                self.position += 1
                yield batch
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
