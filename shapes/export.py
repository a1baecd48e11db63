"""Export a Shapes-world split as mp4 clips plus a JSONL manifest (the on-disk dataset the training stages read).

`export(out_dir, split="train", n=..., ...)` takes the items of `splits.train_specs(n, seed=seed)` or the first
`n` of `splits.heldout_prompts()`, renders each with `world.render(spec, seed=item["seed"], ...)` and writes
`out_dir/videos/<id>.mp4` with `vidpost.media.video_io.write_video`: H.264 (libx264, preset medium, yuv420p,
constant quality `crf`, default 10, i.e. near-lossless), `fps` frames per second, written to a temporary name and
renamed into place. A clip whose file already exists
and decodes (PyAV) to the expected number of frames and size is skipped, so an interrupted export resumes where it
stopped. Then `out_dir/manifest.jsonl` is (re)written, one line per clip, in split order:

    {"id", "video": "videos/<id>.mp4" (relative to out_dir), "caption" (canonical), "prompt_user" (paraphrase),
     "caption_noisy" (web-like), "spec" (SceneSpec.to_dict()), "seed", "num_frames", "height", "width", "fps"}

Held-out items have no stored noisy caption; theirs is `noisy_caption(spec, default_rng(item seed))`.
H.264 with 4:2:0 chroma needs an even height and width.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vidpost.media.video_io import VideoReadError, read_video, write_video

from .captions import noisy_caption
from .splits import heldout_prompts, train_specs
from .world import SceneSpec, render

__all__ = ["SPLITS", "export", "write_clip"]

SPLITS = ("train", "heldout")


def _is_complete(path: Path, num_frames: int, height: int, width: int) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        video = read_video(path, backend="pyav")
    except VideoReadError:
        return False
    return tuple(video.shape) == (3, num_frames, height, width)


def write_clip(path: str | Path, video: np.ndarray, *, fps: int = 8, crf: int = 10) -> Path:
    """Write a rendered clip, float [3, T, H, W] in [0, 1], the way the export stores it: H.264 yuv420p at
    constant quality `crf` (x264 preset "medium"), atomically (`vidpost.media.video_io.write_video`)."""
    _, _, height, width = video.shape
    if height % 2 or width % 2:  # write_video would pad to even sizes: the clip would not match its manifest row
        raise ValueError(f"H.264 yuv420p needs an even height and width, got {height}×{width}")
    return write_video(path, video, fps=int(fps), crf=crf, preset="medium")


def _items(split: str, n: int | None, seed: int) -> list[dict[str, Any]]:
    if split == "train":
        if n is None:
            raise ValueError("the train split is unbounded: pass n")
        return train_specs(n, seed=seed)
    if split == "heldout":
        items = heldout_prompts()
        if n is not None and not 0 <= n <= len(items):
            raise ValueError(f"the held-out split has {len(items)} items, asked for n={n}")
        items = items[:n] if n is not None else items
        for item in items:
            spec = SceneSpec.from_dict(item["spec"])
            item["caption_noisy"] = noisy_caption(spec, np.random.default_rng(item["seed"]))
        return items
    raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


def export(
    out_dir: str | Path,
    *,
    split: str = "train",
    n: int | None = None,
    num_frames: int = 17,
    height: int = 64,
    width: int = 64,
    fps: int = 8,
    seed: int = 0,
    crf: int = 10,
    progress: bool = True,
) -> Path:
    """Render and write a split (see the module doc); returns the path of `manifest.jsonl`.

    `n` clips (all 64 for "heldout" when omitted; required for "train"); `seed` picks the training stream (the
    held-out set is fixed). Existing complete clips are kept, not re-encoded."""
    items = _items(split, n, seed)
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    written = 0
    for item in tqdm(items, desc=f"shapes {split}", unit="clip", disable=not progress):
        path = out / "videos" / f"{item['id']}.mp4"
        if _is_complete(path, num_frames, height, width):
            continue
        spec = SceneSpec.from_dict(item["spec"])
        video = render(spec, num_frames=num_frames, height=height, width=width, seed=item["seed"])
        write_clip(path, video, fps=fps, crf=crf)
        written += 1
    manifest = out / "manifest.jsonl"
    tmp = manifest.with_name(f".{manifest.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            row = {
                "id": item["id"],
                "video": f"videos/{item['id']}.mp4",
                "caption": item["caption"],
                "prompt_user": item["prompt_user"],
                "caption_noisy": item["caption_noisy"],
                "spec": item["spec"],
                "seed": item["seed"],
                "num_frames": num_frames,
                "height": height,
                "width": width,
                "fps": fps,
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, manifest)
    return manifest
