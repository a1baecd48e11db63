"""The GRPO update: the policy gradient of one optimizer step, accumulated over micro-batches × trained steps.

For each micro-batch b of the step's micro-batches and each trained step i (K of them):

    logp   = log π_θ(x_{i+1} | x_i)                      (`step_log_prob`: the rollout's SDE and CFG, with gradients)
    ratio  = exp(logp − logp_old);   L = mean(max(−A·ratio, −A·clip(ratio, 1 − c, 1 + c)))   (`clipped_policy_loss`)
           + β·KL(π_θ ‖ π_ref),  KL = ‖μ_θ − μ_ref‖²/(2·std²)                               (`reference_kl`, β > 0)
    backward(L / (micro-batches · K))

so the accumulated gradient is that of the mean loss over the step's micro-batches and trained steps. Under data
parallelism every backward but the last runs inside accelerate's `no_sync` (one all-reduce per optimizer step). The caller
clips the gradient and steps the optimizer; `grpo_update` only accumulates gradients and statistics.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from vidpost.models.base import VideoModelAdapter

from .loss import clipped_policy_loss, gaussian_kl, ratio_stats
from .rollout import Rollout, step_log_prob

__all__ = ["UpdateStats", "grpo_update", "reference_kl"]


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
    reference: torch.nn.Module | None,
    step_kwargs: dict[str, Any],
) -> torch.Tensor:
    """[B] KL(π_θ ‖ π_ref) of step `step`, from the policy's Gaussian `mean` / `std`: π_ref is the frozen
    `reference` transformer (full fine-tuning), or else `model` with its LoRA adapters disabled."""
    with torch.no_grad():
        if reference is not None:
            _, mean_ref, _ = step_log_prob(adapter, batch, step, model=reference, **step_kwargs)
        else:
            unwrapped = model.module if hasattr(model, "module") else model
            unwrapped.disable_adapters()
            try:
                _, mean_ref, _ = step_log_prob(adapter, batch, step, model=model, **step_kwargs)
            finally:
                unwrapped.enable_adapters()
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
    reference: torch.nn.Module | None = None,
    accelerator: Any | None = None,
) -> float:
    """Accumulate one optimizer step's gradient over the micro-batches `micro` (sample indices into `ro`) and the
    trained `steps` (see the module doc); → the step's loss (mean over its terms). `advantages_N` are the rollout's
    advantages; `step_kwargs` how the policy steps (CFG scale, SDE kind, noise level; as in the rollout);
    `updates` the number of optimizer steps of the iteration (the KL is logged as a mean over all of them);
    `model` the (prepared) transformer to differentiate (None: the adapter's); `accelerator` (an accelerate
    `Accelerator`, or None for plain `backward()`) gives backward, autocast and, with several processes, `no_sync`
    for every backward but the last. Ratios and log-probs are appended to `stats`, as is the KL."""
    backward = accelerator.backward if accelerator is not None else torch.Tensor.backward
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    sync_every = accelerator is None or accelerator.num_processes == 1
    denom = len(micro) * len(steps)
    loss_sum = 0.0
    for j, idx in enumerate(micro):
        mb = ro.select(idx)
        adv_B = advantages_N[idx].to(adapter.device)
        for k, i in enumerate(steps):
            last = j == len(micro) - 1 and k == len(steps) - 1
            ctx = accelerator.no_sync(model) if not (sync_every or last) else contextlib.nullcontext()
            with ctx, autocast():
                logp_B, mean, std = step_log_prob(adapter, mb, i, model=model, **step_kwargs)
                old_B = mb.log_probs[:, i].to(logp_B.device)
                loss, ratio_B = clipped_policy_loss(logp_B, old_B, adv_B, clip_range)
                if kl_beta > 0:
                    kl_B = reference_kl(
                        adapter, mb, i, mean, std, model=model, reference=reference, step_kwargs=step_kwargs
                    )
                    loss = loss + kl_beta * kl_B.mean()
                    stats.kl += float(kl_B.mean().detach()) / (denom * updates)
                backward(loss / denom)
            loss_sum += float(loss.detach()) / denom
            stats.ratios_B.append(ratio_B.detach().cpu())
            stats.logp_new_B.append(logp_B.detach().cpu())
            stats.logp_old_B.append(old_B.detach().cpu())
    return loss_sum
