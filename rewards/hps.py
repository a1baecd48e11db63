"""HPS v2.1 (Human Preference Score): an open_clip ViT-H-14 fine-tuned on human preferences.

    build_reward("hps", path="/weights/HPS_v2.1_compressed.pt")

`path` is the HPS checkpoint — `HPS_v2.1_compressed.pt` (a torch file holding `{"state_dict": ...}` or a bare state
dict, read with `weights_only=True`), a `.safetensors` conversion of it, or a folder holding one of them. `arch`
is the open_clip architecture (default "ViT-H-14"; an open_clip model name or a JSON config path, for tests).

Score, as HPSv2's `img_score`: with L2-normalised image and text features, `(image_features @ text_features.T)
.diag()` — the plain cosine, typically 0.25–0.30 for good generations — averaged over `frames` evenly spaced
frames. Frames are preprocessed like HPSv2's validation transform: the longer side resized to the model's input
size and the rest padded with black (`ResizeMaxSize(224, fill=0)`), then CLIP normalisation; `crop=True` uses the
short-side resize + centre crop instead. Component `hps` holds the score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .base import Reward, RewardOutput, normalize, register, require_files, resize_frames, select_frames
from .clip_score import (
    ClipBackbone,
    build_open_clip,
    load_open_clip_weights,
    open_clip_backbone,
    open_clip_config,
    open_clip_tokenizer,
)

__all__ = ["HPS", "HPS_FILES", "letterbox"]

HPS_FILES = ("HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt", "HPS_v2.1_compressed.safetensors")


def letterbox(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images [N, C, H, W] → [N, C, size, size]: the longer side resized to `size` (bicubic, aspect kept), the
    shorter one padded symmetrically with 0 (black), as open_clip's / HPSv2's `ResizeMaxSize`."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    if (nh, nw) != (h, w):
        images = resize_frames(images, (nh, nw), crop=False)
    ph, pw = size - nh, size - nw
    return F.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)


def load_hps(path: str | Path | None, arch: str = "ViT-H-14", what: str = "hps") -> ClipBackbone:
    p = require_files(path, HPS_FILES, what, any_of=True)
    if p.is_dir():
        p = next(p / name for name in HPS_FILES if (p / name).exists())
    model_cfg, pre_cfg = open_clip_config(arch)
    model = build_open_clip(model_cfg)
    load_open_clip_weights(model, p)
    return open_clip_backbone(model, model_cfg, pre_cfg, open_clip_tokenizer(arch, model_cfg))


class HPS(Reward):
    name = "hps"

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        arch: str = "ViT-H-14",
        frames: int | None = 4,
        crop: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.frames, self.crop = frames, crop
        self.clip = load_hps(path, arch, self.name).to(device=self.device, dtype=self.dtype)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        size = self.clip.image_size
        if self.crop or not isinstance(size, int):
            return self.clip.preprocess(images)
        return normalize(letterbox(images, size), self.clip.mean, self.clip.std)

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        frames = select_frames(videos, self.frames)  # [B, K, C, H, W]
        b, k = frames.shape[:2]
        img = self.clip.encode_pixels(self.preprocess(frames.flatten(0, 1))).view(b, k, -1)
        img = F.normalize(img, dim=-1)
        txt = F.normalize(self.clip.encode_texts(prompts), dim=-1)
        score = (img * txt[:, None]).sum(-1).mean(1)
        return RewardOutput(score, {"hps": score})


@register("hps")
def _hps(**config: Any) -> HPS:
    return HPS(**config)
