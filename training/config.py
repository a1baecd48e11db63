"""Config sections every trainer shares: LoRA, optimiser and schedule, checkpoints, logging."""

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
