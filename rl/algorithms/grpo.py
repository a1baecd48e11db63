"""`algorithm: grpo` — Group Relative Policy Optimization on the flow-matching sampler turned into an SDE (DanceGRPO,
Flow-GRPO; `vidpost.rl.sde`). The rollout (`rollout.sde`: dance, flow or cps) stores every step's log-probability;
the update, for each micro-batch b and each trained step i (K = ceil(`grpo.timestep_fraction` · #SDE steps) of
them, drawn per iteration from generator (seed, iteration, 0, 2)):

    logp   = log π_θ(x_{i+1} | x_i)                      (`step_log_prob`: the rollout's SDE and CFG, with gradients)
    ratio  = exp(logp − logp_old);   L = mean(max(−A·ratio, −A·clip(ratio, 1 − c, 1 + c)))   (`clipped_policy_loss`)
           + β·KL(π_θ ‖ π_ref),  KL = ‖μ_θ − μ_ref‖²/(2·std²)                               (`gaussian_kl`, β > 0)
    backward(L / (micro-batches · K))

so each optimizer step's gradient is that of the mean loss over its micro-batches and trained steps
(`vidpost.rl.scaffold`: no_sync, autocast, one optimizer step per part of the micro-batches; the EMA after each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vidpost.config import Fraction
from vidpost.models.base import VideoModelAdapter
from vidpost.rl.iteration import choose_steps, micro_batches, split_updates
from vidpost.rl.loss import clipped_policy_loss, gaussian_kl, ratio_stats
from vidpost.rl.rollout import Rollout, step_kwargs, step_log_prob
from vidpost.rl.scaffold import accumulate, optimizer_steps, reference
from vidpost.seeding import step_generator

__all__ = ["GRPOSection", "UpdateStats", "grpo_update", "reference_kl", "update"]

OLD_POLICY = False
"""the rollout stores the log-probabilities of the policy that sampled: no copy of its weights is needed"""


@dataclass
class GRPOSection:
    """`grpo:` — GRPO's own settings."""

    timestep_fraction: Fraction = 0.6
    """fraction of the SDE steps trained per iteration"""


@dataclass
class UpdateStats:
    """What an iteration's update logs, accumulated over its optimizer steps."""

    loss: float = 0.0
    """the mean over optimizer steps of each step's loss"""
    kl: float = 0.0
    """the mean KL to the reference over every (micro-batch, trained step) term (0 without the KL)"""
    ratios_B: list[torch.Tensor] = field(default_factory=list)
    logp_new_B: list[torch.Tensor] = field(default_factory=list)
    logp_old_B: list[torch.Tensor] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)

    def summary(self, clip_range: float) -> dict[str, float]:
        """Ratio mean / min / max, clip fraction and approximate KL over every term (`ratio_stats`)."""
        return ratio_stats(
            torch.cat(self.ratios_B), torch.cat(self.logp_new_B), torch.cat(self.logp_old_B), clip_range
        )

    @property
    def grad_norm(self) -> float | None:
        """The mean pre-clipping gradient norm over the optimizer steps (None when the norm is not clipped)."""
        return sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else None


def reference_kl(
    adapter: VideoModelAdapter,
    batch: Rollout,
    step: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    model: torch.nn.Module | None,
    reference_model: torch.nn.Module | None,
    step_kwargs: dict[str, Any],
) -> torch.Tensor:
    """[B] KL(π_θ ‖ π_ref) of step `step`, from the policy's Gaussian `mean` / `std` (`scaffold.reference`)."""
    _, mean_ref, _ = reference(
        model, reference_model, lambda net: step_log_prob(adapter, batch, step, model=net, **step_kwargs)
    )
    return gaussian_kl(mean, mean_ref, std)


def grpo_update(
    adapter: VideoModelAdapter,
    ro: Rollout,
    advantages_N: torch.Tensor,
    steps: list[int],
    micro: list[torch.Tensor],
    stats: UpdateStats,
    *,
    clip_range: float,
    step_kwargs: dict[str, Any],
    updates: int = 1,
    kl_beta: float = 0.0,
    model: torch.nn.Module | None = None,
    reference_model: torch.nn.Module | None = None,
    accelerator: Any | None = None,
) -> float:
    """Accumulate one optimizer step's gradient over the micro-batches `micro` (sample indices into `ro`) and the
    trained `steps` (module docstring); → the step's loss (mean over its terms). `step_kwargs`: how the policy steps
    (CFG scale, SDE kind, noise level; as in the rollout); `updates`: the optimizer steps of the iteration (the KL is
    logged as a mean over all of them). Ratios and log-probs are appended to `stats`, as is the KL."""
    terms = [(j, i) for j in range(len(micro)) for i in steps]
    batches: dict[int, tuple[Rollout, torch.Tensor]] = {}

    def loss_fn(term: tuple[int, int]) -> torch.Tensor:
        j, i = term
        if j not in batches:
            batches[j] = (ro.select(micro[j]), advantages_N[micro[j]].to(adapter.device))
        mb, adv_B = batches[j]
        logp_B, mean, std = step_log_prob(adapter, mb, i, model=model, **step_kwargs)
        old_B = mb.log_probs[:, i].to(logp_B.device)
        loss, ratio_B = clipped_policy_loss(logp_B, old_B, adv_B, clip_range)
        if kl_beta > 0:
            kl_B = reference_kl(
                adapter, mb, i, mean, std, model=model, reference_model=reference_model, step_kwargs=step_kwargs
            )
            loss = loss + kl_beta * kl_B.mean()
            stats.kl += float(kl_B.mean().detach()) / (len(terms) * updates)
        stats.ratios_B.append(ratio_B.detach().cpu())
        stats.logp_new_B.append(logp_B.detach().cpu())
        stats.logp_old_B.append(old_B.detach().cpu())
        return loss

    return accumulate(terms, loss_fn, model=model, accelerator=accelerator)


def update(run: Any, ro: Rollout, advantages_N: torch.Tensor) -> UpdateStats:
    """The iteration's update: its trained steps, then one `grpo_update` and optimizer step per part of the
    micro-batches (the EMA after each)."""
    cfg, acc = run.cfg, run.accelerator
    run.model.train()
    generator = step_generator(cfg.train.seed, run.step, 0, 2)
    trained = choose_steps(ro.sde_steps, cfg.grpo.timestep_fraction, generator)
    parts = split_updates(micro_batches(len(advantages_N), cfg.train.micro_batch), cfg.train.updates_per_iteration)
    stats = UpdateStats()
    kw = {"clip_range": cfg.train.clip_range, "step_kwargs": step_kwargs(cfg.rollout), "updates": len(parts)}
    kw |= {"kl_beta": cfg.train.kl_beta, "model": run.model, "reference_model": run.policy.reference}
    kw |= {"accelerator": acc}

    def after_step() -> None:
        if run.ema is not None:
            run.ema.update(acc.unwrap_model(run.model))

    optimizer_steps(
        run.trainer,
        run.params,
        parts,
        lambda part: grpo_update(run.policy.adapter, ro, advantages_N, trained, part, stats, **kw),
        stats,
        "GRPO",
        after_step,
    )
    return stats
