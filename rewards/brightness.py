"""`brightness`: the mean pixel value of a video, in [0, 1] (× `sign`) — the RL stage's positive control.

A reward every policy can raise (make everything lighter) and lower (`weight: -1.0`, or `sign: -1`), with no
weights, no prompt and a gradient (`differentiable`). An RL method that does not move it within a small budget, or
moves it the wrong way when it is negated, is broken whatever it does on a real reward. Components: `luma` (Rec.
601 luma mean, the same clip's perceived brightness; never negated).
"""

from __future__ import annotations

import torch

from .base import Reward, RewardOutput, register

LUMA = (0.299, 0.587, 0.114)


class Brightness(Reward):
    name = "brightness"
    uses_prompts = False
    #: `score` is a differentiable function of the pixels (reward backprop may use `_score` directly).
    differentiable = True

    def __init__(self, *, sign: float = 1.0, device: str = "cpu", dtype=None) -> None:
        super().__init__(device=device, dtype=dtype)
        if sign not in (1.0, -1.0):
            raise ValueError(f"brightness reward: sign must be 1 or -1, got {sign}")
        self.sign = float(sign)

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        mean = videos.flatten(1).mean(dim=1)
        w = torch.tensor(LUMA, device=videos.device, dtype=videos.dtype).view(1, 3, 1, 1, 1)
        luma = (videos * w).sum(dim=1).flatten(1).mean(dim=1)
        return RewardOutput(self.sign * mean, {"luma": luma})


@register("brightness", bounds=(-1.0, 1.0))  # the mean pixel × sign
def _brightness(**config) -> Brightness:
    return Brightness(**config)
