"""Group-relative advantages (GRPO): A = (r − mean_g) / (std_g + ε), clamped to ±`clip`.

Rewards come as [N] with a group id per sample (the prompt's index; each prompt is sampled G times). `std`
is the group's (per-group, the default) or the whole batch's (`global_std=True`, as some Flow-GRPO configs
do when groups are small). The standard deviation is the population one (divide by G), as in DanceGRPO.
Groups whose rewards are all equal get advantage 0 (and are counted by `zero_std_fraction`). With several
rewards, each gets its own advantage, and the advantages are mixed with weights (`mix_advantages`) —
normalising each reward before weighting keeps one reward's scale from drowning the others.
"""

from __future__ import annotations

import torch

__all__ = ["group_advantages", "mix_advantages", "reward_advantages", "zero_std_fraction"]


def _group_stats(rewards: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, inverse = torch.unique(groups, return_inverse=True)
    n = torch.zeros(len(ids), dtype=torch.float64).index_add_(
        0, inverse, torch.ones_like(rewards, dtype=torch.float64)
    )
    r = rewards.double()
    mean = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, r) / n
    var = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, (r - mean[inverse]) ** 2) / n
    return mean, var.sqrt(), inverse


def group_advantages(
    rewards: torch.Tensor,
    groups: torch.Tensor,
    *,
    eps: float = 1e-4,
    clip: float = 5.0,
    global_std: bool = False,
) -> torch.Tensor:
    """[N] rewards, [N] group ids → [N] float32 advantages."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    groups = torch.as_tensor(groups).flatten()
    if rewards.shape != groups.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and groups {tuple(groups.shape)} differ")
    mean, std, inverse = _group_stats(rewards, groups)
    centred = rewards.double() - mean[inverse]
    if global_std:
        scale = rewards.double().std(unbiased=False)
        adv = centred / (scale + eps)
    else:
        adv = centred / (std[inverse] + eps)
    adv = torch.where(std[inverse] > 0, adv, torch.zeros_like(adv))
    return adv.clamp(-clip, clip).float()


def mix_advantages(advantages: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ_k weights[k] · advantages[k] (each already group-normalised)."""
    missing = set(weights) - set(advantages)
    if missing:
        raise KeyError(f"no advantages for rewards {sorted(missing)}")
    total = None
    for name, w in weights.items():
        term = w * advantages[name]
        total = term if total is None else total + term
    if total is None:
        raise ValueError("mix_advantages: no weights given")
    return total


def zero_std_fraction(rewards: torch.Tensor, groups: torch.Tensor) -> float:
    """Fraction of groups whose rewards are all equal (they carry no learning signal)."""
    _, std, _ = _group_stats(
        torch.as_tensor(rewards, dtype=torch.float32).flatten(), torch.as_tensor(groups).flatten()
    )
    return float((std == 0).double().mean())


def reward_advantages(
    scores: dict[str, torch.Tensor],
    total: torch.Tensor,
    groups: torch.Tensor,
    weights: dict[str, float],
    *,
    per_reward: bool,
    eps: float = 1e-4,
    clip: float = 5.0,
    global_std: bool = False,
) -> torch.Tensor:
    """[N] advantages of a batch scored by several rewards: with `per_reward` (and more than one reward), each
    reward's own group advantages mixed with `weights`; otherwise the group advantages of the weighted `total`."""
    kw = {"eps": eps, "clip": clip, "global_std": global_std}
    if per_reward and len(weights) > 1:
        per = {k: group_advantages(scores[k], groups, **kw) for k in weights}
        return mix_advantages(per, weights)
    return group_advantages(total, groups, **kw)
