"""The GRPO policy objective and its diagnostics (pure functions).

    ratio = exp(logp_new − logp_old)
    loss  = mean( max(−A·ratio, −A·clip(ratio, 1 − c, 1 + c)) )        (PPO's clipped surrogate, c ~ 1e-4..1e-3)

`logp_*` are per-sample log-probabilities of one denoising step's transition (see `vidpost.rl.sde`); the
trainer sums this loss over the trained steps (a random `timestep_fraction` of the trajectory), dividing by
their number. Optional KL to the reference policy (the same network with LoRA disabled, or an EMA copy) for a
Gaussian step with a shared std: KL = ‖μ_θ − μ_ref‖² / (2·std²), reduced by the mean over latent elements like
the log-prob, weighted by β.
"""

from __future__ import annotations

import torch

__all__ = ["clipped_policy_loss", "gaussian_kl", "ratio_stats"]


def clipped_policy_loss(
    logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (scalar loss, ratio [B]). `logp_old` and `advantages` are treated as constants."""
    ratio = torch.exp(logp_new - logp_old.detach())
    adv = advantages.detach().to(ratio.dtype)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


def gaussian_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mean, std²) ‖ N(mean_ref, std²)) averaged over non-batch elements → [B]."""
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    safe = torch.where(std > 0, std, torch.ones_like(std))
    kl = (mean.float() - mean_ref.float()) ** 2 / (2 * safe**2)
    kl = torch.where(std > 0, kl, torch.zeros_like(kl))
    return kl.flatten(1).mean(dim=1)


@torch.no_grad()
def ratio_stats(
    ratio: torch.Tensor, logp_new: torch.Tensor, logp_old: torch.Tensor, clip_range: float
) -> dict[str, float]:
    """Logging: ratio mean/min/max, the fraction of clipped ratios, and the approximate KL
    ½·E[(logp_new − logp_old)²] between the sampling and the current policy."""
    diff = (logp_new - logp_old).float()
    return {
        "ratio_mean": ratio.mean().item(),
        "ratio_min": ratio.min().item(),
        "ratio_max": ratio.max().item(),
        "clip_fraction": ((ratio - 1).abs() > clip_range).float().mean().item(),
        "approx_kl": 0.5 * diff.pow(2).mean().item(),
    }
