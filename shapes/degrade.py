"""Degradations that imitate what a tiny generative model (or a lossy pipeline) does to a Shapes-world clip.

`degrade(video, rng)` applies, in this order, each with parameters drawn uniformly from the given ranges:
1. wash-out: blend towards mid-grey 0.5 by w ∈ `wash` and desaturate (blend towards the pixel's mean) by
   d ∈ `desaturate`;
2. colour shift: per-channel gain 1 + U(−g, g) and offset U(−o, o) with (g, o) = `colour_shift`;
3. Gaussian blur over H and W with σ ∈ `blur` pixels (separable, edges replicated);
4. additive Gaussian noise with standard deviation ∈ `noise`;
5. JPEG compression of every frame (PIL, 4:2:0 chroma subsampling) at quality ∈ `jpeg_quality`;
then clips to [0, 1]. The defaults are stronger than what an H.264 round-trip does and are the "degraded"
setting of `verifier_accuracy` and of the tests. `gaussian_blur` is exposed for tests (e.g. 32×32 blurry clips).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["degrade", "gaussian_blur", "jpeg"]


def gaussian_blur(video: np.ndarray, sigma: float) -> np.ndarray:
    """Blur [..., H, W] with a Gaussian of standard deviation `sigma` pixels (edges replicated)."""
    if sigma <= 0:
        return video
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    pad = [(0, 0)] * (video.ndim - 2)
    out = np.pad(video, pad + [(radius, radius), (0, 0)], mode="edge")
    out = sum(taps[i] * out[..., i : i + video.shape[-2], :] for i in range(len(taps)))
    out = np.pad(out, pad + [(0, 0), (radius, radius)], mode="edge")
    out = sum(taps[i] * out[..., i : i + video.shape[-1]] for i in range(len(taps)))
    return out.astype(np.float32)


def jpeg(video: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-compress each frame of a video [3, T, H, W] at `quality` and decode it back."""
    frames = (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 3, 0)
    out = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return (np.stack(out).transpose(3, 0, 1, 2).astype(np.float32)) / 255.0


def degrade(
    video: np.ndarray,
    rng: np.random.Generator,
    *,
    wash: tuple[float, float] = (0.0, 0.25),
    desaturate: tuple[float, float] = (0.0, 0.2),
    colour_shift: tuple[float, float] = (0.08, 0.04),
    blur: tuple[float, float] = (0.3, 1.2),
    noise: tuple[float, float] = (0.0, 0.05),
    jpeg_quality: tuple[int, int] = (30, 80),
) -> np.ndarray:
    """Degrade a video float [3, T, H, W] in [0, 1] (see the module doc); returns a new float32 array."""
    v = np.asarray(video, dtype=np.float32)
    w = rng.uniform(*wash)
    v = v * (1 - w) + 0.5 * w
    d = rng.uniform(*desaturate)
    v = v * (1 - d) + v.mean(0, keepdims=True) * d
    gain, offset = colour_shift
    v = v * (1 + rng.uniform(-gain, gain, size=(3, 1, 1, 1))) + rng.uniform(-offset, offset, size=(3, 1, 1, 1))
    v = gaussian_blur(v, rng.uniform(*blur))
    v = v + rng.normal(0.0, rng.uniform(*noise), size=v.shape)
    v = jpeg(np.clip(v, 0, 1), int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1)))
    return np.clip(v, 0.0, 1.0).astype(np.float32)
