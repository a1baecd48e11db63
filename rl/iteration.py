"""What one on-policy iteration draws, as functions of (seed, iteration): its prompts, its trained steps and the
layout of its update (micro-batches, optimizer steps).

Every random choice of an iteration comes from a CPU generator seeded by (seed, iteration, item, stream), never
from the global RNG, so a resumed run draws what an uninterrupted one would, and N processes draw what one process
does for the same global batch.
"""

from __future__ import annotations

import math

import torch

from vidpost.seeding import step_generator

__all__ = ["choose_prompts", "choose_steps", "micro_batches", "split_updates"]


def choose_prompts(pool: list[str], n_global: int, seed: int, step: int) -> list[str]:
    """Iteration `step`'s `n_global` prompts: distinct ones from a seeded permutation of `pool`, or drawn with
    replacement when the pool is smaller than the batch."""
    g = step_generator(seed, step, 0, 0)
    idx = torch.randperm(len(pool), generator=g)[: min(n_global, len(pool))]
    if len(idx) < n_global:  # small pool: sample with replacement
        idx = torch.randint(len(pool), (n_global,), generator=g)
    return [pool[i] for i in idx.tolist()]


def choose_steps(sde_steps_S: torch.Tensor, fraction: float, generator: torch.Generator) -> list[int]:
    """K = ceil(fraction · #SDE steps) (at least 1) of the stochastic steps (`sde_steps_S`, [S] bool), at random,
    in increasing order."""
    candidates = torch.nonzero(sde_steps_S).flatten()
    k = max(1, math.ceil(fraction * len(candidates)))
    perm = torch.randperm(len(candidates), generator=generator)[:k]
    return sorted(candidates[perm].tolist())


def micro_batches(n: int, size: int) -> list[torch.Tensor]:
    """The sample indices 0..n−1 in consecutive micro-batches of `size` (the last one may be smaller)."""
    return [torch.arange(i, min(i + size, n)) for i in range(0, n, size)]


def split_updates(micro: list[torch.Tensor], updates: int) -> list[list[torch.Tensor]]:
    """The micro-batches split into `updates` consecutive parts of near-equal length (at most one per
    micro-batch, at least one), one optimizer step each."""
    updates = max(1, min(updates, len(micro)))
    return [micro[u * len(micro) // updates : (u + 1) * len(micro) // updates] for u in range(updates)]
