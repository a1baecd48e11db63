"""`algorithm: nft` — DiffusionNFT (Zheng et al., arXiv 2509.16117; NVlabs/DiffusionNFT): the forward-process update
(`vidpost.rl.algorithms.forward`) with the loss of `vidpost.rl.forward.nft_loss` — implicit positive and negative
policies v_old ± β·(v_θ − v_old), weighted by the optimality r = `nft_optimality(A)` ∈ [0, 1]. The old policy
rolls out and after each iteration moves towards θ: old ← d·old + (1 − d)·θ, d = min(`nft.old_decay_rate` ·
optimizer steps, `nft.old_decay_cap`) (`old_policy_decay`; DiffusionNFT's defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vidpost.config import NonNegativeFloat, PositiveFloat
from vidpost.rl.algorithms.forward import ForwardStats, Term, update_and_move_old
from vidpost.rl.forward import nft_loss, nft_optimality, old_policy_decay
from vidpost.rl.rollout import Rollout

OLD_POLICY = True
"""the rollouts come from the old policy, which the checkpoints keep"""


@dataclass
class NFTSection:
    """`nft:` — DiffusionNFT's settings."""

    beta: PositiveFloat = 1.0
    """DiffusionNFT's β: how far the implicit positive / negative policies sit from the old one"""
    old_decay_rate: NonNegativeFloat = 0.001
    old_decay_cap: NonNegativeFloat = 0.5
    """the old policy after each iteration: old ← d·old + (1 − d)·θ, d = min(rate · optimizer steps, cap)
    (rate 0 keeps old = θ at every rollout)"""


def old_decay(cfg: Any, optimizer_steps: int) -> float:
    """The decay of the old policy's update after `optimizer_steps` optimizer steps."""
    return old_policy_decay(optimizer_steps, cfg.nft.old_decay_rate, cfg.nft.old_decay_cap)


def loss(cfg: Any):
    def term_loss(t: Term, stats: ForwardStats) -> torch.Tensor:
        v_old = t.old()
        r = nft_optimality(t.adv, cfg.train.adv_clip)
        value, parts = nft_loss(t.v, v_old, t.x_t, t.x0, t.sigma, r, beta=cfg.nft.beta, adv_clip=cfg.train.adv_clip)
        stats.add("positive", parts["positive"])
        stats.add("negative", parts["negative"])
        stats.add("old_deviation", (t.v.detach() - v_old).pow(2).flatten(1).mean(1))
        return value

    return term_loss


def update(run: Any, ro: Rollout, advantages_N: torch.Tensor) -> ForwardStats:
    return update_and_move_old(run, ro, advantages_N, loss(run.cfg), lambda steps: old_decay(run.cfg, steps))
