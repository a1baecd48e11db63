"""PickScore: a CLIP-H fine-tuned on Pick-a-Pic human preferences.

    build_reward("pickscore", path="/weights/PickScore_v1")

`path` is a transformers `CLIPModel` folder in PickScore_v1's layout (`config.json`, `model.safetensors` or
`pytorch_model.bin`, tokenizer files, `preprocessor_config.json`). When the tokenizer / preprocessor files live
elsewhere (the reference code takes them from laion/CLIP-ViT-H-14-laion2B-s32B-b79K), `processor_path` names that
folder.

Score, as the reference: `model.logit_scale.exp() * cos(image embedding, text embedding)` (≈ 100 × cosine; ~20–23
for typical generations), averaged over `frames` evenly spaced frames. Components: `pickscore` (the score) and
`cos` (the mean cosine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import Reward, RewardOutput, register, require_files, select_frames
from .clip_score import load_clip

__all__ = ["PickScore"]


class PickScore(Reward):
    name = "pickscore"

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        processor_path: str | Path | None = None,
        frames: int | None = 4,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.frames = frames
        folder = require_files(path, ["config.json"], self.name)  # a transformers CLIPModel folder, not open_clip
        self.clip = load_clip(
            folder, processor_path=processor_path, device=self.device, dtype=self.dtype, what=self.name
        )

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        cos = self.clip.cosine(select_frames(videos, self.frames), prompts)
        score = self.clip.logit_scale.exp().to(cos.device) * cos
        return RewardOutput(score, {"pickscore": score, "cos": cos})


@register("pickscore")
def _pickscore(**config: Any) -> PickScore:
    return PickScore(**config)
