"""`algorithm: rsft` — rejection-sampling fine-tuning (RAFT / RSFT): the forward-process update
(`vidpost.rl.algorithms.forward`) with the plain flow-matching loss mean((v_θ − (ε − x0))²) on the samples each group
keeps: its best `rsft.k` by advantage and/or those with advantage ≥ `rsft.min_advantage` (`rsft_select`). With
k = G it is SFT on every rollout (tested)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vidpost.config import PositiveInt
from vidpost.rl.algorithms.forward import ForwardStats, Term
from vidpost.rl.algorithms.forward import update as forward_update_iteration
from vidpost.rl.forward import rsft_select
from vidpost.rl.rollout import Rollout

OLD_POLICY = False


@dataclass
class RSFTSection:
    """`rsft:` — which samples rejection-sampling fine-tuning keeps."""

    k: PositiveInt | None = 1
    """keep each group's best k samples by advantage (null: no per-group cut)"""
    min_advantage: float | None = None
    """keep only samples with advantage ≥ this (null: no threshold); with k, both apply"""


def loss(cfg: Any):
    def term_loss(t: Term, stats: ForwardStats) -> torch.Tensor:
        return (t.v - (t.eps - t.x0)).pow(2).flatten(1).mean(1).mean()

    return term_loss


def select(cfg: Any, advantages_N: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The indices of the samples RSFT trains on (`rsft_select`)."""
    return rsft_select(advantages_N, groups, k=cfg.rsft.k, threshold=cfg.rsft.min_advantage)


def update(run: Any, ro: Rollout, advantages_N: torch.Tensor) -> ForwardStats:
    keep = select(run.cfg, advantages_N, ro.groups)
    return forward_update_iteration(run, ro, advantages_N, loss(run.cfg), keep)
