"""Rewards that need no learned weights: temporal consistency and motion (VBench-style).

`temporal` — temporal consistency: per-frame features f_t, then the mean over t ≥ 1 of
    (1 − w)·cos(f_t, f_{t−1}) + w·cos(f_t, f_0),   w = `first_weight` (default ½)
(VBench's subject/background consistency formula at w = ½). The frame-to-first term falls with any motion, wanted
or not; w = 0 keeps only frame-to-frame stability (flicker, popping), the better guard for a policy that is
being taught to move things. Features come from
  * `backbone: "pixels"` (default, no weights): the frame at 16×16, each channel centred over the frame — it
    measures appearance stability (flicker, objects appearing/vanishing, colour drift); fast motion lowers it too;
  * `backbone: "clip"` with `path` (+ `arch` for open_clip files): the CLIP image embedding, as VBench uses for
    background consistency (less sensitive to position).
Components: `frame_to_prev`, `frame_to_first`.

`motion` — dynamic degree from a classical dense optical flow (Lucas–Kanade on a 2-level pyramid, in torch):
score = mean over consecutive frame pairs of the mean of the top 5 % flow magnitudes, in pixels per frame at
the analysed resolution (default 64 on the short side), like VBench's RAFT-based dynamic degree. Components:
`flow` (the score), `frame_diff` (mean absolute frame difference), `dynamic` (1 if the flow clears
`dynamic_threshold`, VBench's binary judgement).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Reward, RewardOutput, register, resize_frames, select_frames


class TemporalConsistency(Reward):
    name = "temporal"
    uses_prompts = False

    def __init__(
        self,
        *,
        backbone: str = "pixels",
        path: str | None = None,
        arch: str | None = None,
        frames: int | None = 16,
        size: int = 16,
        first_weight: float = 0.5,
        device: str = "cpu",
        dtype=None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        if backbone not in ("pixels", "clip"):
            raise ValueError(f"temporal reward: backbone must be 'pixels' or 'clip', got {backbone!r}")
        if not 0.0 <= first_weight <= 1.0:
            raise ValueError(f"temporal reward: first_weight must be in [0, 1], got {first_weight}")
        self.backbone, self.frames, self.size, self.first_weight = backbone, frames, size, first_weight
        self.clip = None
        if backbone == "clip":
            from .clip_score import load_clip

            self.clip = load_clip(path, arch=arch, device=self.device, what="temporal (clip backbone)")

    def _move(self, device: torch.device) -> None:
        if self.clip is not None:
            self.clip.to(device)

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """[B, T, D] per-frame features."""
        frames = select_frames(videos, self.frames)  # [B, T, C, H, W]
        b, t = frames.shape[:2]
        if self.clip is not None:
            return self.clip.encode_images(frames.flatten(0, 1)).view(b, t, -1).float()
        small = resize_frames(frames, (self.size, self.size), crop=False)
        small = small - small.mean(dim=(-1, -2), keepdim=True)
        return small.flatten(2)

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        f = F.normalize(self.features(videos), dim=-1, eps=1e-6)
        if f.shape[1] < 2:
            ones = torch.ones(f.shape[0])
            return RewardOutput(ones, {"frame_to_prev": ones, "frame_to_first": ones})
        prev = (f[:, 1:] * f[:, :-1]).sum(-1).mean(1)
        first = (f[:, 1:] * f[:, :1]).sum(-1).mean(1)
        w = self.first_weight
        return RewardOutput((1 - w) * prev + w * first, {"frame_to_prev": prev, "frame_to_first": first})


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


def _warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `img` [N, 1, H, W] at (x + u, y + v)."""
    n, _, h, w = img.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=img.device, dtype=img.dtype),
        torch.arange(w, device=img.device, dtype=img.dtype),
        indexing="ij",
    )
    gx = (xs + flow[:, 0]) / max(w - 1, 1) * 2 - 1
    gy = (ys + flow[:, 1]) / max(h - 1, 1) * 2 - 1
    return F.grid_sample(img, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border", align_corners=True)


def lucas_kanade(
    a: torch.Tensor, b: torch.Tensor, *, window: int = 7, levels: int = 2, iters: int = 3
) -> torch.Tensor:
    """Dense optical flow from `a` to `b` (grey images [N, 1, H, W] in [0, 1]) → [N, 2, H, W] in pixels: the
    windowed Lucas–Kanade least-squares solve, iterated with warping, coarse to fine."""
    pyr_a, pyr_b = [a], [b]
    for _ in range(levels - 1):
        pyr_a.append(F.avg_pool2d(pyr_a[-1], 2))
        pyr_b.append(F.avg_pool2d(pyr_b[-1], 2))
    flow = torch.zeros(a.shape[0], 2, *pyr_a[-1].shape[-2:], device=a.device, dtype=a.dtype)
    kx = torch.tensor([[[[-0.5, 0.0, 0.5]]]], device=a.device, dtype=a.dtype)
    for level in reversed(range(levels)):
        la, lb = pyr_a[level], pyr_b[level]
        if flow.shape[-2:] != la.shape[-2:]:
            flow = 2 * F.interpolate(flow, size=la.shape[-2:], mode="bilinear", align_corners=False)
        ix = F.conv2d(F.pad(la, (1, 1, 0, 0), mode="replicate"), kx)
        iy = F.conv2d(F.pad(la, (0, 0, 1, 1), mode="replicate"), kx.transpose(-1, -2))
        sxx, syy, sxy = _box(ix * ix, window), _box(iy * iy, window), _box(ix * iy, window)
        # Tikhonov regularisation relative to the image's mean gradient energy: flat regions get ~zero flow
        # instead of a division by ~0, textured ones are barely affected.
        reg = 1e-2 * (sxx + syy).mean(dim=(-1, -2), keepdim=True) + 1e-12
        sxx, syy = sxx + reg, syy + reg
        det = sxx * syy - sxy * sxy
        for _ in range(iters):
            it = _warp(lb, flow) - la
            sxt, syt = _box(ix * it, window), _box(iy * it, window)
            du = (-syy * sxt + sxy * syt) / det
            dv = (sxy * sxt - sxx * syt) / det
            flow = flow + torch.cat([du, dv], 1).clamp(-4, 4)
    return flow


class Motion(Reward):
    name = "motion"
    uses_prompts = False

    def __init__(
        self,
        *,
        frames: int | None = None,
        size: int = 64,
        top_fraction: float = 0.05,
        dynamic_threshold: float = 0.5,
        device: str = "cpu",
        dtype=None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.frames, self.size, self.top, self.threshold = frames, size, top_fraction, dynamic_threshold

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        frames = select_frames(videos, self.frames)  # [B, T, C, H, W]
        b, t = frames.shape[:2]
        if t < 2:
            zero = torch.zeros(b)
            return RewardOutput(zero, {"flow": zero, "frame_diff": zero, "dynamic": zero})
        h, w = frames.shape[-2:]
        scale = self.size / min(h, w)
        size = (max(8, round(h * scale)), max(8, round(w * scale)))
        grey = _gray(resize_frames(frames, size, crop=False).flatten(0, 1).float()).view(b, t, 1, *size)
        a, c = grey[:, :-1].flatten(0, 1), grey[:, 1:].flatten(0, 1)
        mag = lucas_kanade(a, c).norm(dim=1).flatten(1)  # [B·(T−1), H·W]
        k = max(1, int(self.top * mag.shape[1]))
        flow = mag.topk(k, dim=1).values.mean(1).view(b, t - 1).mean(1)
        diff = (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=(1, 2, 3, 4))
        return RewardOutput(flow, {"flow": flow, "frame_diff": diff, "dynamic": (flow > self.threshold).float()})


@register("temporal", bounds=(-1.0, 1.0))  # a mean of cosine similarities
def _temporal(**config) -> TemporalConsistency:
    return TemporalConsistency(**config)


@register("motion")
def _motion(**config) -> Motion:
    return Motion(**config)
