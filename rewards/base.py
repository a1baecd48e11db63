"""The reward contract, shared helpers, the registry and the weighted combination.

A reward maps a batch of videos and their prompts to one score per video:

    reward(videos: float[B, C, T, H, W] in [0, 1], prompts: list[str]) -> RewardOutput(score[B], components)

`components` holds named per-video values for logging (e.g. VideoAlign's visual / motion / text-alignment
heads, or the verifier's per-attribute scores); `score` is what a trainer optimises. Each reward picks its own
frames (`select_frames`) and its own input resolution and normalisation (`resize_frames`, `normalize`), runs
under `torch.no_grad`, in its own device and dtype (bf16 autocast on CUDA), and returns float32 on the CPU.
Rewards never compute advantages: weighting happens once, in `WeightedReward`, and advantages in `vidpost.rl`.

Rewards with learned weights always take a local path; `require_files` turns a missing or incomplete path into
one error that names the files it expected.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "REGISTRY",
    "Reward",
    "RewardOutput",
    "RewardPathError",
    "WeightedReward",
    "build_reward",
    "build_rewards",
    "reward_bounds",
    "known_rewards",
    "normalize",
    "register",
    "require_files",
    "resize_frames",
    "select_frames",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class RewardPathError(FileNotFoundError):
    """A reward's weights are missing: the message names the path and the files expected there."""


@dataclass
class RewardOutput:
    """`score` [B] float32 on the CPU, and named per-video components [B] for logging."""

    score: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)


class Reward:
    """Base class. Subclasses set `name` and implement `_score(videos, prompts) -> RewardOutput`, receiving the
    videos already checked, on `self.device`, float32 in [0, 1], shape [B, C, T, H, W]."""

    name = "reward"
    #: A reward that needs the prompt (text alignment, verifier) sets this; others ignore `prompts`.
    uses_prompts = True

    def __init__(self, *, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None) -> None:
        self.device = torch.device(device)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)

    def to(self, device: str | torch.device) -> Reward:
        """Move the reward's models; subclasses with modules override `_move`."""
        self.device = torch.device(device)
        self._move(self.device)
        return self

    def _move(self, device: torch.device) -> None:
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                value.to(device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 (or the configured half dtype) autocast on CUDA; nothing on the CPU."""
        if self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        videos = check_videos(videos, prompts)
        with self.autocast():
            out = self._score(videos.to(self.device, torch.float32), list(prompts))
        score = out.score.detach().float().cpu()
        if score.shape != (videos.shape[0],):
            raise RuntimeError(f"{self.name}: returned scores of shape {tuple(score.shape)} for {videos.shape[0]}")
        components = {k: v.detach().float().cpu() for k, v in out.components.items()}
        return RewardOutput(score, components)

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device})"


def check_videos(videos: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Validate the contract's input: a float tensor [B, C, T, H, W] in [0, 1] with C = 3 and len(prompts) = B."""
    if not isinstance(videos, torch.Tensor):
        videos = torch.as_tensor(videos)
    if videos.dim() != 5:
        raise ValueError(f"videos must be [B, C, T, H, W]; got shape {tuple(videos.shape)}")
    if videos.shape[1] != 3:
        raise ValueError(f"videos must have 3 colour channels in dim 1; got shape {tuple(videos.shape)}")
    if not videos.is_floating_point():
        raise ValueError(f"videos must be float in [0, 1]; got {videos.dtype} (divide uint8 frames by 255)")
    if len(prompts) != videos.shape[0]:
        raise ValueError(f"got {videos.shape[0]} videos and {len(prompts)} prompts")
    return videos


def select_frames(videos: torch.Tensor, k: int | None) -> torch.Tensor:
    """`k` evenly spaced frames (first and last included) of [B, C, T, H, W] → [B, k, C, H, W]; all if k is None
    or ≥ T."""
    t = videos.shape[2]
    if k is None or k >= t:
        idx = torch.arange(t)
    elif k == 1:
        idx = torch.tensor([t // 2])
    else:
        idx = torch.tensor([round(i * (t - 1) / (k - 1)) for i in range(k)])
    return videos[:, :, idx.to(videos.device)].transpose(1, 2)


def resize_frames(frames: torch.Tensor, size: int | tuple[int, int], *, crop: bool = True) -> torch.Tensor:
    """Resize images [..., C, H, W] the way CLIP-style preprocessors do: bicubic resize of the short side to
    `size` then centre crop (or a plain resize to (h, w) when `crop` is False or `size` is a pair)."""
    lead, (c, h, w) = frames.shape[:-3], frames.shape[-3:]
    x = frames.reshape(-1, c, h, w)
    if isinstance(size, int) and crop:
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=scale < 1)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top : top + size, left : left + size]
        out_hw = (size, size)
    else:
        out_hw = (size, size) if isinstance(size, int) else tuple(size)
        x = F.interpolate(x, size=out_hw, mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0, 1).reshape(*lead, c, *out_hw)


def normalize(
    frames: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """Channel normalisation of images [..., C, H, W]."""
    m = torch.tensor(mean, device=frames.device, dtype=frames.dtype).view(-1, 1, 1)
    s = torch.tensor(std, device=frames.device, dtype=frames.dtype).view(-1, 1, 1)
    return (frames - m) / s


def require_files(path: str | Path | None, expected: Sequence[str], what: str, *, any_of: bool = False) -> Path:
    """Return `path` as a Path if it exists and holds `expected` (all of them, or one with `any_of`); otherwise
    raise `RewardPathError` naming the reward, the path and the expected files. A file path is accepted when
    `expected` is empty or its name is one of them."""
    if path is None or str(path) == "":
        raise RewardPathError(f"{what}: no weights path given; set it in the reward config (expected {expected})")
    p = Path(path).expanduser()
    if not p.exists():
        raise RewardPathError(f"{what}: weights path {p} does not exist (expected {_describe(expected, any_of)})")
    if p.is_file():
        if not expected or p.name in expected or any_of:
            return p
        raise RewardPathError(f"{what}: {p} is a file; expected a folder with {_describe(expected, any_of)}")
    present = [name for name in expected if (p / name).exists()]
    if (any_of and not present) or (not any_of and len(present) < len(expected)):
        missing = [name for name in expected if name not in present]
        raise RewardPathError(
            f"{what}: {p} lacks {', '.join(missing) if not any_of else _describe(expected, True)} "
            f"(expected {_describe(expected, any_of)})"
        )
    return p


def _describe(expected: Sequence[str], any_of: bool) -> str:
    return (" or ".join(expected) if any_of else ", ".join(expected)) or "weights"


# ----------------------------------------------------------------------------------------------- registry

#: Built-in reward name → the module that registers it (imported on first use, so heavy optional dependencies
#: such as open_clip load only for the rewards a run asks for).
BUILTIN: dict[str, str] = {
    "clip": "clip_score",
    "hps": "hps",
    "pickscore": "pickscore",
    "aesthetic": "aesthetic",
    "videoalign": "videoalign",
    "temporal": "motion",
    "motion": "motion",
    "verifier": "verifier",
    "verifier_binary": "verifier",
    "verifier_soft": "verifier_soft",
    "threshold": "threshold",
    "brightness": "brightness",
}

#: name → factory(**config) → Reward. Each reward module registers itself on import.
REGISTRY: dict[str, Callable[..., Reward]] = {}
BOUNDS: dict[str, tuple[float, float]] = {}
"""the range a registered reward's score lies in, where it has one (statistics clip intervals to it)"""


def register(
    name: str, bounds: tuple[float, float] | None = None
) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    def deco(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        REGISTRY[name] = factory
        if bounds is not None:
            BOUNDS[name] = bounds
        return factory

    return deco


def reward_bounds(name: str) -> tuple[float, float] | None:
    """The range of the registered reward `name`'s score, or None (unbounded, or not a registered name)."""
    if name not in REGISTRY and name in BUILTIN:
        import importlib

        importlib.import_module(f"vidpost.rewards.{BUILTIN[name]}")
    return BOUNDS.get(name)


def known_rewards() -> list[str]:
    return sorted(set(REGISTRY) | set(BUILTIN))


def build_reward(name: str, **config: Any) -> Reward:
    """One reward by registry name with its config (paths, frames, device, ...)."""
    if name not in REGISTRY and name in BUILTIN:
        import importlib

        importlib.import_module(f"vidpost.rewards.{BUILTIN[name]}")
    if name not in REGISTRY:
        raise KeyError(f"unknown reward {name!r}; known: {', '.join(known_rewards())}")
    return REGISTRY[name](**config)


class WeightedReward:
    """Σ weight_i · reward_i. Calling it returns the weighted total and, as components, each reward's score
    (under its name) and each reward's own components (as `<name>/<component>`)."""

    def __init__(self, rewards: dict[str, Reward], weights: dict[str, float]) -> None:
        if set(rewards) != set(weights):
            raise ValueError("rewards and weights must name the same rewards")
        self.rewards, self.weights = rewards, weights

    @property
    def names(self) -> list[str]:
        return list(self.rewards)

    def __call__(self, videos: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        outputs = {name: reward(videos, prompts) for name, reward in self.rewards.items()}
        return self.combine(outputs)

    def combine(self, outputs: dict[str, RewardOutput]) -> RewardOutput:
        """The weighted total of already computed rewards."""
        return self.combine_outputs(outputs, self.weights)

    @staticmethod
    def combine_outputs(outputs: dict[str, RewardOutput], weights: dict[str, float]) -> RewardOutput:
        """Σ weights[name] · outputs[name].score, with every score and component kept for logging (also used by
        the reward server, which computes the parts in other processes)."""
        total = None
        components: dict[str, torch.Tensor] = {}
        for name, out in outputs.items():
            components[name] = out.score
            for key, value in out.components.items():
                components[f"{name}/{key}"] = value
            term = weights[name] * out.score
            total = term if total is None else total + term
        assert total is not None
        return RewardOutput(total, components)


def build_rewards(spec: dict[str, Any], **common: Any) -> WeightedReward:
    """`{"hps": 1.0, "clip": {"weight": 0.5, "path": ...}}` → a `WeightedReward`. A bare number is the weight;
    a dict holds `weight` (default 1) and the reward's own config. `common` (e.g. `device`) goes to every reward
    that does not set it."""
    if not spec:
        raise ValueError("build_rewards: no rewards given")
    rewards, weights = {}, {}
    for name, cfg in spec.items():
        if isinstance(cfg, (int, float)):
            cfg = {"weight": float(cfg)}
        cfg = dict(cfg)
        weight = float(cfg.pop("weight", 1.0))
        if not math.isfinite(weight):
            raise ValueError(f"reward {name!r}: weight must be finite")
        kind = cfg.pop("type", name)
        rewards[name] = build_reward(kind, **{**common, **cfg})
        weights[name] = weight
    return WeightedReward(rewards, weights)
