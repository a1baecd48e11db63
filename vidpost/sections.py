"""Config sections and field groups the stages share, defined once: LoRA, optimiser and schedule, checkpoints,
logging; the video size and the prompt pool a stage samples with (inherited by its own section, so the keys stay
where a preset writes them: `rollout.num_frames`, `data.prompts`, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vidpost.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt


@dataclass
class LoraConfig:
    enabled: bool = True
    """train a LoRA (true) or the full transformer (false)"""
    rank: PositiveInt = 16
    alpha: NonNegativeFloat = 16.0
    dropout: Fraction = 0.0
    target_modules: list[str] | None = None
    """module-name suffixes to adapt; null = the family default (attention projections + feed-forward)"""


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """adamw8bit needs bitsandbytes (GPU)"""
    lr: NonNegativeFloat = 1e-4
    weight_decay: NonNegativeFloat = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    warmup_steps: NonNegativeInt = 0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """lr after warm-up: constant, or decaying linearly / by cosine to min_lr_ratio·lr at max_steps"""
    min_lr_ratio: float = 0.0
    max_grad_norm: NonNegativeFloat = 1.0
    """gradient clipping (0 disables)"""


@dataclass
class CheckpointConfig:
    every: NonNegativeInt = 200
    """save a resumable checkpoint every N optimizer steps (0: only at the end)"""
    keep_last: NonNegativeInt = 2


@dataclass
class LogConfig:
    every: NonNegativeInt = 10
    tensorboard: bool = True
    wandb: bool = False


@dataclass
class VideoSize:
    num_frames: PositiveInt | None = None
    """frames of the videos sampled (null: the model's generation defaults, its `vidpost.json`)"""
    height: PositiveInt | None = None
    """height in pixels (null: the model's default)"""
    width: PositiveInt | None = None
    """width in pixels (null: the model's default)"""


@dataclass
class PromptPool:
    prompts: list[str] | str = "shapes-train"
    """a list of prompts, a .txt/.jsonl file, "shapes-train" (the Shapes train split's captions) or the held-out
    set's ("shapes-heldout")"""
    pool_size: PositiveInt = 2048
    """how many prompts of the set / the file form the pool"""
