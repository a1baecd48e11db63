"""Forward-process RL objectives (pure functions): DiffusionNFT, advantage-weighted matching, rejection sampling.

They train on the policy's own clean samples x0 (any sampler: ODE, few steps, no CFG), re-noised at a time σ
with fresh noise ε — x_σ = (1 − σ)·x0 + σ·ε, the velocity target v* = ε − x0 (data → noise), the convention of
`vidpost.pipelines.sft` and of every reference below — so no likelihood of the sampling chain is needed.

**DiffusionNFT** (Zheng et al., arXiv 2509.16117; NVlabs/DiffusionNFT `scripts/train_nft_sd3.py`). With the old
policy's velocity v_old (no gradient) and the current one v_θ, the implicit positive and negative policies are

    v⁺ = (1 − β)·v_old + β·v_θ          v⁻ = (1 + β)·v_old − β·v_θ

and their clean-sample predictions x0^± = x_σ − σ·v^±. Each is scored by an adaptively normalised squared error
L^± = mean((x0^± − x0)²) / sg(mean|x0^± − x0|) (per sample; the normaliser clipped below at 1e-5), and

    loss = mean_i [ r_i·L⁺_i + (1 − r_i)·L⁻_i ] / β · adv_clip

with the optimality r = clip(A / adv_clip / 2 + ½, 0, 1) from the advantage A clipped to ±adv_clip (5). At
v_θ = v_old both policies equal v_old and the gradient is ∝ (2r − 1)·∂L/∂v: good samples pull v_θ towards their
target, bad ones push it away, with r = ½ contributing nothing (`nft_loss`'s tests pin these). The reference also
adds a KL β_KL·mean‖v_θ − v_ref‖² to the base model (default 1e-4) — `velocity_kl` — and keeps v_old as a slowly
updated copy of θ (`old ← d·old + (1 − d)·θ`, d = min(0.001·step, 0.5), `old_policy_decay`). Departure: none in
the loss; the adaptive normaliser is computed in float64 as in the reference.

**AWM** (advantage-weighted matching; scxue/advantage_weighted_matching `train_sd3_awm.py`). The per-sample
"log-likelihood" is the negative flow-matching error lp = −mean((v_θ − v*)²), here optionally weighted by the
reference's `ghuber` transform; the objective is PPO's clipped surrogate on ratio = exp(lp − lp_old):

    loss = mean( max(−A·ratio, −A·clip(ratio, 1 − c, 1 + c)) ) + β·mean‖v_θ − v_ref‖²

(`awm_loss` is the first term; the caller adds `velocity_kl`, as for NFT.)

In the reference lp_old is the current forward pass (on-policy: ratio ≡ 1 and the gradient is A·∇lp, an
advantage-weighted flow-matching loss); with lp_old from the sampling policy (Flow-Factory) the clip acts.

**Rejection sampling (RSFT / RAFT)**: keep each group's best k samples (or those above a threshold) and train the
plain flow-matching loss on them; with k = G it is SFT on all samples (`rsft_select`).
"""

from __future__ import annotations

import torch

__all__ = [
    "awm_log_likelihood",
    "awm_loss",
    "nft_loss",
    "nft_optimality",
    "old_policy_decay",
    "rsft_select",
    "velocity_kl",
]


def nft_optimality(advantages: torch.Tensor, adv_clip: float = 5.0) -> torch.Tensor:
    """Advantages → DiffusionNFT's optimality r = clip(clip(A, ±adv_clip) / adv_clip / 2 + ½, 0, 1) ∈ [0, 1]."""
    a = advantages.float().clamp(-adv_clip, adv_clip)
    return (a / adv_clip / 2 + 0.5).clamp(0.0, 1.0)


def _normalised_error(x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Per-sample mean((x0_pred − x0)²) / sg(mean|x0_pred − x0|) (clipped ≥ 1e-5, float64) → [B]."""
    diff = (x0_pred.float() - x0.float()).flatten(1)
    with torch.no_grad():
        scale = diff.double().abs().mean(dim=1).clamp_min(1e-5)
    return (diff**2).mean(dim=1) / scale.to(diff.dtype)


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    r: torch.Tensor,
    *,
    beta: float = 1.0,
    adv_clip: float = 5.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DiffusionNFT's policy loss (module doc) → (scalar, {'positive': L⁺ [B], 'negative': L⁻ [B]}).

    v_theta, v_old, x_t, x0: [B, ...]; sigma: [B] (the noise level x_t was made at); r: [B] optimality in [0, 1].
    v_old is treated as a constant."""
    if beta <= 0:
        raise ValueError(f"nft beta must be positive (got {beta})")
    v_old = v_old.detach()
    s = sigma.float().view(-1, *([1] * (x_t.dim() - 1)))
    v_pos = (1 - beta) * v_old + beta * v_theta
    v_neg = (1 + beta) * v_old - beta * v_theta
    l_pos = _normalised_error(x_t - s * v_pos, x0)
    l_neg = _normalised_error(x_t - s * v_neg, x0)
    r = r.detach().float().to(l_pos.device)
    per_sample = (r * l_pos + (1 - r) * l_neg) / beta
    return per_sample.mean() * adv_clip, {"positive": l_pos.detach(), "negative": l_neg.detach()}


def velocity_kl(v_theta: torch.Tensor, v_ref: torch.Tensor) -> torch.Tensor:
    """mean‖v_θ − v_ref‖² over all elements (the references' KL surrogate to a reference policy); v_ref constant."""
    return (v_theta.float() - v_ref.detach().float()).pow(2).mean()


def old_policy_decay(step: int, rate: float = 0.001, cap: float = 0.5) -> float:
    """DiffusionNFT's default schedule for the old policy's soft update old ← d·old + (1 − d)·θ after optimiser step
    `step`: d = min(rate·step, cap) (0 at first: the old policy follows θ exactly, then lags more)."""
    return min(rate * step, cap)


def awm_log_likelihood(
    v_theta: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, *, weighting: str = "uniform"
) -> torch.Tensor:
    """Per-sample lp = −mean((v_θ − (ε − x0))²) → [B]; weighting 'uniform', 't' (×σ) or 'ghuber' (the AWM
    reference's default: −σ/p·((−lp + 1e-10)^p − 1e-10^p), p = ¼)."""
    err = (v_theta.float() - (noise.float() - x0.float())).pow(2).flatten(1).mean(dim=1)
    s = sigma.float().flatten()
    if weighting == "uniform":
        return -err
    if weighting == "t":
        return -s * err
    if weighting == "ghuber":
        p = 0.25
        return -s / p * ((err + 1e-10) ** p - 1e-10**p)
    raise ValueError(f"unknown AWM weighting {weighting!r}: use 'uniform', 't' or 'ghuber'")


def awm_loss(
    lp: torch.Tensor, lp_old: torch.Tensor, advantages: torch.Tensor, *, clip_range: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """AWM's clipped surrogate on ratio = exp(lp − lp_old) → (scalar, ratio [B]); lp_old, advantages constant."""
    ratio = torch.exp(lp - lp_old.detach())
    adv = advantages.detach().float().to(ratio.device)
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range)).mean(), ratio


def rsft_select(
    rewards: torch.Tensor, groups: torch.Tensor, *, k: int | None = None, threshold: float | None = None
) -> torch.Tensor:
    """Indices of the samples RSFT trains on: each group's best `k` (ties broken by position), and/or those with
    reward ≥ `threshold` (both given: both conditions). Sorted ascending."""
    if k is None and threshold is None:
        raise ValueError("rsft needs k (best k per group) or threshold (or both)")
    rewards, groups = rewards.flatten().float(), groups.flatten()
    keep = torch.ones_like(rewards, dtype=torch.bool)
    if k is not None:
        if k < 1:
            raise ValueError(f"rsft k must be ≥ 1 (got {k})")
        best = torch.zeros_like(keep)
        for g in torch.unique(groups):
            idx = torch.nonzero(groups == g).flatten()
            order = sorted(idx.tolist(), key=lambda i: (-float(rewards[i]), i))
            best[order[:k]] = True
        keep &= best
    if threshold is not None:
        keep &= rewards >= threshold
    return torch.nonzero(keep).flatten()
