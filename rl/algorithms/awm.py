"""`algorithm: awm` — advantage-weighted matching (scxue/advantage_weighted_matching): the forward-process update
(`vidpost.rl.algorithms.forward`) with a PPO-style clipped surrogate on the per-sample flow-matching likelihood,
ratio = exp(lp_θ − lp_old), lp = −mean((v − (ε − x0))²) (`awm_log_likelihood`, `awm_loss`). The old policy equals θ
at every rollout (decay 0), so the ratio is exactly 1 on an iteration's first optimizer step and clipping acts on
the later ones (`train.updates_per_iteration` > 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from vidpost.rl.algorithms.forward import ForwardStats, Term, update_and_move_old
from vidpost.rl.forward import awm_log_likelihood, awm_loss
from vidpost.rl.rollout import Rollout

OLD_POLICY = True
"""the ratio's denominator is the policy that rolled out (θ at the iteration's start)"""


@dataclass
class AWMSection:
    """`awm:` — advantage-weighted matching's settings."""

    weighting: Literal["uniform", "t", "ghuber"] = "uniform"
    """the per-sample likelihood transform (`awm_log_likelihood`)"""


def old_decay(cfg: Any, optimizer_steps: int) -> float:
    return 0.0


def loss(cfg: Any):
    def term_loss(t: Term, stats: ForwardStats) -> torch.Tensor:
        v_old = t.old()
        lp = awm_log_likelihood(t.v, t.x0, t.eps, t.sigma, weighting=cfg.awm.weighting)
        lp_old = awm_log_likelihood(v_old, t.x0, t.eps, t.sigma, weighting=cfg.awm.weighting)
        value, ratio = awm_loss(lp, lp_old, t.adv, clip_range=cfg.train.clip_range)
        stats.add("ratio", ratio)
        return value

    return term_loss


def update(run: Any, ro: Rollout, advantages_N: torch.Tensor) -> ForwardStats:
    return update_and_move_old(run, ro, advantages_N, loss(run.cfg), lambda steps: 0.0)
