"""Animated GIF thumbnails and data: URIs for the self-contained reports."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import torch

from vidpost.media.video_io import probe_video, read_video


def load_video(path: str | None) -> tuple[torch.Tensor, float]:
    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"video file {path} not found")
    info = probe_video(path)
    return read_video(path), info.fps


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


def thumb_uri(run_dir: Path, rec: dict[str, Any], size: int, frames: int) -> str | None:
    """data: URI of `<run_dir>/thumbs/<id>.gif`, made from the video when the thumbnail is missing."""
    f = run_dir / "thumbs" / f"{rec['id']}.gif"
    if f.is_file():
        data = f.read_bytes()
    elif rec.get("status") == "ok" and rec.get("video"):
        try:
            video, fps = load_video(rec["video"])
        except Exception:  # noqa: BLE001 - the report just shows no thumbnail
            return None
        data = make_gif(video, fps, size=size, frames=frames)
    else:
        return None
    return "data:image/gif;base64," + base64.b64encode(data).decode()


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
