"""The training rewards of an RL run: their config section, and the scorer (in-process or a `RewardServer`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RewardsConfig", "build_training_rewards"]


@dataclass
class RewardsConfig:
    spec: dict[str, Any] = field(default_factory=lambda: {"verifier": 1.0})
    """reward name → weight, or → {weight, type, path, ...options} (see vidpost.rewards.base.build_rewards)"""
    per_reward_advantages: bool = True
    """normalise each reward within its group, then mix the advantages with the weights"""
    server: bool = False
    """score in separate worker processes (RewardServer) instead of in-process"""
    workers: int = 1
    devices: list[str] | None = None


def build_training_rewards(cfg: RewardsConfig) -> Any:
    """The weighted reward of `cfg.spec`: a `RewardServer` of `cfg.workers` processes with `cfg.server`, else a
    `WeightedReward` in this process; either is called as `(videos, prompts) → RewardOutput` and has `weights`."""
    if cfg.server:
        from vidpost.rewards.server import RewardServer

        return RewardServer(cfg.spec, workers=cfg.workers, devices=cfg.devices)
    from vidpost.rewards.base import build_rewards

    return build_rewards(cfg.spec)
