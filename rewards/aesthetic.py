"""LAION aesthetic score: a small head on the L2-normalised CLIP image embedding.

    build_reward("aesthetic", path="/weights/sac+logos+ava1-l14-linearMSE.pth", clip_path="/weights/clip-vit-large-patch14")

`path` is the head (`.safetensors`, or `.pth` / `.pt` read with `torch.load(weights_only=True)`; or a folder holding
one of `HEAD_FILES`); its format is told by its state-dict keys:

  * improved-aesthetic-predictor (`sac+logos+ava1-l14-linearMSE.pth`): `layers.{0,2,4,6,7}.weight/bias`, an
    `nn.Sequential` of Linear(D,1024), Dropout, Linear(1024,128), Dropout, Linear(128,64), Dropout,
    Linear(64,16), Linear(16,1) — no activations (the reference comments them out). The Sequential is rebuilt
    from the saved indices, so the keys load strictly.
  * LAION-AI/aesthetic-predictor's linear head (`sa_0_4_vit_l_14_linear.pth`): `weight` [1, D] and `bias` [1] of a
    Linear(D, 1), also accepted under a prefix (`linear.weight`, `head.weight`, ...).

`clip_path` (+ `arch` for an open_clip weights file) is the CLIP backbone, loaded by `clip_score.load_clip`: both
reference heads were trained on OpenAI's ViT-L/14 (transformers `openai/clip-vit-large-patch14`, or open_clip
arch "ViT-L-14-quickgelu" with OpenAI's weights). Score: the head's prediction (≈ 1–10) averaged over `frames`
evenly spaced frames; component `aesthetic` holds it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Reward, RewardOutput, register, require_files, select_frames
from .clip_score import load_clip, load_state_dict_file

__all__ = ["HEAD_FILES", "AestheticMLP", "Aesthetic", "load_aesthetic_head"]

HEAD_FILES = (
    "sac+logos+ava1-l14-linearMSE.pth",
    "sa_0_4_vit_l_14_linear.pth",
    "aesthetic_head.safetensors",
    "aesthetic_head.pth",
)


class AestheticMLP(nn.Module):
    """improved-aesthetic-predictor's MLP: `layers` holds Linear layers at the saved indices and Dropout between
    (Linear(D,1024), Dropout, Linear(1024,128), Dropout, Linear(128,64), Dropout, Linear(64,16), Linear(16,1))."""

    def __init__(self, shapes: dict[int, tuple[int, int]], dropout: float = 0.2) -> None:
        super().__init__()
        n = max(shapes) + 1
        self.layers = nn.Sequential(
            *[nn.Linear(shapes[i][1], shapes[i][0]) if i in shapes else nn.Dropout(dropout) for i in range(n)]
        )

    @classmethod
    def standard(cls, dim: int = 768) -> AestheticMLP:
        return cls({0: (1024, dim), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _LinearHead(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def load_aesthetic_head(path: str | Path) -> tuple[nn.Module, int]:
    """(head, input dim) from a head file, its format told by the state-dict keys (see the module docstring)."""
    sd = load_state_dict_file(path)
    mlp = {k: v for k, v in sd.items() if re.search(r"(^|\.)layers\.\d+\.(weight|bias)$", k)}
    if mlp:
        prefix = re.match(r"^(.*?)layers\.\d+\.", next(iter(mlp))).group(1)
        mlp = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix + "layers.")}
        shapes = {int(k.split(".")[1]): tuple(v.shape) for k, v in mlp.items() if k.endswith(".weight")}
        if any(len(s) != 2 for s in shapes.values()):
            raise ValueError(f"{path}: MLP aesthetic head with non-Linear layers {sorted(shapes)}")
        order = sorted(shapes)
        for a, b in zip(order, order[1:]):
            if shapes[a][0] != shapes[b][1]:
                raise ValueError(
                    f"{path}: MLP aesthetic head layers {a} → {b} do not chain ({shapes[a]}, {shapes[b]})"
                )
        if shapes[order[-1]][0] != 1:
            raise ValueError(f"{path}: MLP aesthetic head must end in one output, got {shapes[order[-1]]}")
        head: nn.Module = AestheticMLP(shapes)
        head.load_state_dict(mlp, strict=True)
        return head.eval(), shapes[order[0]][1]
    weights = [k for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    if len(weights) == 1 and sd[weights[0]].shape[0] == 1:
        prefix = weights[0][: -len("weight")]
        w = sd[weights[0]]
        head = _LinearHead(w.shape[1])
        state = {"linear.weight": w, "linear.bias": sd.get(prefix + "bias", torch.zeros(1))}
        head.load_state_dict(state, strict=True)
        return head.eval(), w.shape[1]
    raise ValueError(
        f"{path}: unrecognised aesthetic head; expected improved-aesthetic-predictor keys (layers.0.weight ... "
        f"layers.7.bias) or one Linear(D, 1) (weight, bias); got keys {sorted(sd)[:8]}"
    )


class Aesthetic(Reward):
    name = "aesthetic"
    uses_prompts = False

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        clip_path: str | Path | None = None,
        arch: str | None = None,
        frames: int | None = 4,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.frames = frames
        p = require_files(path, HEAD_FILES, self.name, any_of=True)
        if p.is_dir():
            p = next(p / name for name in HEAD_FILES if (p / name).exists())
        head, dim = load_aesthetic_head(p)
        self.clip = load_clip(
            clip_path, arch=arch, device=self.device, dtype=self.dtype, what=f"{self.name} (CLIP backbone clip_path)"
        )
        if self.clip.embed_dim is not None and self.clip.embed_dim != dim:
            raise ValueError(
                f"{self.name}: head {p.name} takes {dim}-d embeddings but the CLIP backbone gives {self.clip.embed_dim}"
            )
        self.head = head.to(self.device)  # kept in float32: tiny, and the score's scale is sensitive

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        frames = select_frames(videos, self.frames)
        b, k = frames.shape[:2]
        emb = F.normalize(self.clip.encode_images(frames.flatten(0, 1)), dim=-1)
        with torch.autocast(self.device.type, enabled=False):
            score = self.head(emb.float()).view(b, k).mean(1)
        return RewardOutput(score, {"aesthetic": score})


@register("aesthetic")
def _aesthetic(**config: Any) -> Aesthetic:
    return Aesthetic(**config)
