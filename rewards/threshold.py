"""A binary reward from any reward: 1 where its score clears a threshold, else 0 (GenEval-style pass/fail).

    build_rewards({"pass": {"type": "threshold", "reward": "aesthetic", "threshold": 5.5, "path": ...}})

The wrapped reward's score is kept as the `raw` component.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Reward, RewardOutput, build_reward, register


class ThresholdReward(Reward):
    def __init__(self, reward: Reward, threshold: float, *, above: bool = True) -> None:
        super().__init__(device=reward.device, dtype=reward.dtype)
        self.inner, self.threshold, self.above = reward, float(threshold), above
        self.name = f"{reward.name}>={threshold:g}" if above else f"{reward.name}<{threshold:g}"

    def __call__(self, videos: torch.Tensor, prompts) -> RewardOutput:
        out = self.inner(videos, prompts)
        passed = out.score >= self.threshold if self.above else out.score < self.threshold
        return RewardOutput(passed.float(), {"raw": out.score, **out.components})

    def to(self, device) -> ThresholdReward:
        self.inner.to(device)
        self.device = self.inner.device
        return self


@register("threshold", bounds=(0.0, 1.0))
def _threshold(*, reward: str | Reward, threshold: float, above: bool = True, **config: Any) -> ThresholdReward:
    inner = reward if isinstance(reward, Reward) else build_reward(reward, **config)
    return ThresholdReward(inner, threshold, above=above)
