"""Flow-matching training maths every stage shares (the noising of a clean latent, the training noise levels, the
loss and its weighting, the given frames of first-frame conditioning); the derivation is in `pipelines/sft.py`'s
docstring (Stage 1), which is their first user."""

from __future__ import annotations

import math
from typing import Any

import torch

from vidpost.models.sampling import shift_sigmas


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)·x0 + σ·ε (σ per sample [B])."""
    s = per_sample(sigma, x0)
    return (1 - s) * x0 + s * noise


def per_sample(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """σ (a number, or one per sample) shaped to broadcast against `like` [B, ...]."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=like.device)
    return s.view(-1, *[1] * (like.ndim - 1)) if s.ndim else s


def sample_sigmas(n: int, generator: torch.Generator, cfg: Any) -> torch.Tensor:
    """Training noise levels σ ∈ (0, 1) for n samples of a training config `cfg` (`timestep_sampling`: uniform, or
    sigmoid(N(`logit_mean`, `logit_std`)); then `shift`)."""
    if cfg.timestep_sampling == "uniform":
        u = torch.rand(n, generator=generator)
    else:
        u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=generator))
    return shift_sigmas(u, cfg.shift)


def loss_weight(sigma: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "none":
        return torch.ones_like(sigma)
    if kind == "cosmap":
        return 2.0 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
    raise ValueError(f"unknown loss weighting {kind!r}")


def flow_matching_loss(
    pred: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    weight: torch.Tensor,
    given: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample w·mean((v_pred − (ε − x0))²), shape [B]; the mean leaves out each clip's `given` latent frames
    (bool [B, T]: given, not predicted)."""
    err = (pred.float() - (noise - x0).float()) ** 2
    if given is None:
        return weight * err.flatten(1).mean(1)
    keep = (~given.bool()).float()
    return weight * (err.mean((1, 3, 4)) * keep).sum(1) / keep.sum(1)


def given_frames(g: torch.Generator, n: int, frames: int, cfg: Any) -> torch.Tensor | None:
    """Which latent frames of each of `n` clips are given ([n, frames] bool; None when `given_frame_share` is 0)."""
    if cfg.given_frame_share <= 0:
        return None
    mask = torch.zeros(n, frames, dtype=torch.bool)
    mask[:, cfg.given_frame] = torch.rand(n, generator=g) < cfg.given_frame_share
    return mask
