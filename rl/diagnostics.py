"""How much signal a policy gradient carries: agreement between independent estimates of one gradient.

Model. R rollouts of the same prompts with independent noise give gradient estimates gᵢ = μ + nᵢ, where μ is the
expected policy gradient and the nᵢ are independent, zero-mean, with E‖nᵢ‖² = σ². Then for i ≠ j

    E⟨gᵢ, gⱼ⟩ = ‖μ‖²        E‖gᵢ‖² = ‖μ‖² + σ²

so  ρ = mean_{i<j} ⟨gᵢ, gⱼ⟩ / mean_i ‖gᵢ‖²  estimates the share of one estimate's squared norm that is signal,
‖μ‖² / (‖μ‖² + σ²) (it is also the expected cosine between two estimates when their norms are similar). The
signal-to-noise ratio of one estimate is SNR² = ρ / (1 − ρ); averaging k estimates divides σ² by k, so the number
of estimates (of this batch size) whose mean has SNR 1 is k₁ = (1 − ρ) / ρ.

A control measures the estimator's own spread: the same rollouts with the advantages permuted within each group
(`permute_within_groups`) have μ = 0, so their ρ scatters around 0 by the amount that sampling error alone gives.
A ρ inside that scatter means no measurable signal.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

__all__ = ["gradient_agreement", "permute_within_groups"]


def gradient_agreement(grads: Sequence[torch.Tensor]) -> dict[str, float]:
    """For R ≥ 2 flattened gradient estimates of one expected gradient: `rho` (signal share, see the module doc),
    `snr2` (ρ / (1 − ρ), per estimate; 0 when ρ ≤ 0), `estimates_for_snr1` ((1 − ρ) / ρ; inf when ρ ≤ 0),
    `cos_mean` / `cos_std` (over the R(R − 1)/2 pairs), `pairs`, `norm` (mean ‖gᵢ‖)."""
    if len(grads) < 2:
        raise ValueError(f"gradient_agreement needs at least 2 estimates, got {len(grads)}")
    g = torch.stack([x.detach().flatten().double() for x in grads])
    if g.shape[1] == 0:
        raise ValueError("gradient_agreement: empty gradients")
    gram = g @ g.T
    sq = gram.diagonal()
    pairs = list(itertools.combinations(range(len(g)), 2))
    inner = torch.stack([gram[i, j] for i, j in pairs])
    cos = torch.stack([gram[i, j] / (sq[i].sqrt() * sq[j].sqrt()).clamp_min(1e-300) for i, j in pairs])
    rho = float(inner.mean() / sq.mean().clamp_min(1e-300))
    return {
        "rho": rho,
        "snr2": rho / (1 - rho) if 0 < rho < 1 else (math.inf if rho >= 1 else 0.0),
        "estimates_for_snr1": (1 - rho) / rho if rho > 0 else math.inf,
        "cos_mean": float(cos.mean()),
        "cos_std": float(cos.std()) if len(cos) > 1 else 0.0,
        "pairs": float(len(pairs)),
        "norm": float(sq.sqrt().mean()),
    }


def permute_within_groups(values: torch.Tensor, groups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`values` with each group's entries shuffled among that group's positions (the null control above)."""
    out = values.clone()
    for gid in torch.unique(groups):
        idx = torch.nonzero(groups == gid).flatten()
        out[idx] = values[idx[torch.randperm(len(idx), generator=generator)]]
    return out
