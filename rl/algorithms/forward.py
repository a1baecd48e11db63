"""What the forward-process algorithms (`nft`, `awm`, `rsft`) share: they train with the flow-matching loss on the
policy's own clean samples, re-noised, so no likelihood of the sampling chain is needed (the rollout is the ODE).

For each micro-batch b (sample indices) and each of the K training noise levels of its samples (the terms of
`vidpost.rl.scaffold.accumulate`):

    ε ~ N(0, I),   x_σ = (1 − σ)·x0 + σ·ε                      (x0: the rollout's clean latents; σ per sample)
    v_θ   = the policy's velocity at (x_σ, σ)                 (with gradients; guided by CFG with `forward.guided`)
    v_old = the old policy's (nft, awm; no gradient)
    L     = the algorithm's loss of (v_θ, v_old, x_σ, x0, ε, σ, A)    (`nft.loss`, `awm.loss`, `rsft.loss`)
          + β_KL·mean‖v_θ − v_ref‖²                           (β_KL > 0: v_ref = LoRA disabled, or a frozen copy)
    backward(L / (micro-batches · K))

Where a method needs the old policy's prediction and the old policy *is* the current one (no optimizer step since
it was copied, as on the first update of an iteration with decay 0), v_θ detached is used instead of a second
forward pass: the same value. σ and ε come from generators seeded by (seed, iteration, sample), so a resumed run
draws what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from vidpost.config import Fraction
from vidpost.models.base import PromptEmbeds, VideoModelAdapter
from vidpost.rl.forward import velocity_kl
from vidpost.rl.iteration import micro_batches, split_updates
from vidpost.rl.rollout import Rollout
from vidpost.rl.scaffold import accumulate, optimizer_steps, reference
from vidpost.seeding import step_generator
from vidpost.training.ema import EMA

__all__ = [
    "ForwardBatch",
    "ForwardSection",
    "ForwardStats",
    "OldPolicy",
    "Term",
    "forward_update",
    "training_sigmas",
    "update",
    "update_and_move_old",
]


@dataclass
class ForwardSection:
    """`forward:` — where the forward-process algorithms (nft, awm, rsft) train."""

    timestep_fraction: Fraction = 0.6
    """K = ceil(fraction · S) of the rollout's S noise levels are trained per sample (each sample its own, at
    random; DiffusionNFT trains nearly all: 0.99)"""
    guided: bool = True
    """the trained velocity is the CFG-guided one the rollout samples with (False: the conditional velocity alone,
    as DiffusionNFT's CFG-free recipe; then sample with guidance 1)"""


@dataclass
class ForwardBatch:
    """What the update trains on: the rollout's clean latents and prompts, and each sample's K noise levels."""

    x0: torch.Tensor  # [N, C, T, H, W] float32
    cond: PromptEmbeds  # [N]
    uncond: PromptEmbeds | None  # [N] when the trained velocity is guided
    sigmas: torch.Tensor  # [N, K] the noise levels each sample is trained at
    index: torch.Tensor  # [N] each sample's global index in the iteration (seeds its noise)


@dataclass
class ForwardStats:
    """What an iteration's update logs, accumulated over its optimizer steps."""

    trained: int = 0
    """samples the update trained on (rsft: those selected)"""
    loss: float = 0.0
    terms: int = 0
    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    grad_norms: list[float] = field(default_factory=list)

    def add(self, name: str, value: torch.Tensor) -> None:
        self.values.setdefault(name, []).append(value.detach().float().flatten().cpu())

    @property
    def kl(self) -> float:
        """The mean KL term over every (micro-batch, noise level) (0 without the KL)."""
        return float(torch.cat(self.values["kl"]).mean()) if "kl" in self.values else 0.0

    def summary(self, clip_range: float) -> dict[str, float]:
        out = {"trained": float(self.trained)}
        out |= {f"{k}_mean": float(torch.cat(v).mean()) for k, v in self.values.items() if k not in ("ratio", "kl")}
        if "ratio" in self.values:
            ratio = torch.cat(self.values["ratio"])
            out |= {
                "ratio_mean": float(ratio.mean()),
                "ratio_min": float(ratio.min()),
                "ratio_max": float(ratio.max()),
            }
            out["clip_fraction"] = float(((ratio - 1).abs() > clip_range).float().mean())
        return out

    @property
    def grad_norm(self) -> float | None:
        return sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else None


class OldPolicy(EMA):
    """θ_old: a copy of the trainable weights (float32), moved towards θ by `update(decay)`; `active(model)` swaps
    it into the model for a forward pass. `current` is True while it equals θ exactly (just copied, no optimizer
    step since)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model, 0.0)
        self.current = True

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float | None = None) -> None:
        if decay is not None:
            self.decay = decay
        if self.decay == 0.0:  # an exact copy (a lerp with weight 1 need not be)
            for n, p in model.named_parameters():
                if n in self.shadow:
                    self.shadow[n].copy_(p.detach().float())
        else:
            super().update(model)
        self.current = self.decay == 0.0

    @contextlib.contextmanager
    def active(self, model: torch.nn.Module) -> Iterator[None]:
        stash = {}
        for n, p in model.named_parameters():
            if n in self.shadow:
                stash[n] = p.data
                p.data = self.shadow[n].to(p.dtype)
        try:
            yield
        finally:
            for n, p in model.named_parameters():
                if n in stash:
                    p.data = stash[n]


def training_sigmas(
    sigmas_S: torch.Tensor, n: int, fraction: float, seed: int, step: int, first_index: int = 0
) -> torch.Tensor:
    """[n, K]: for each sample its own K = ceil(fraction · S) distinct noise levels of the rollout's schedule
    (σ_0..σ_{S−1}, the final 0 excluded), drawn from generator (seed, step, first_index + sample, 3)."""
    levels = sigmas_S[:-1].float()
    k = max(1, min(len(levels), math.ceil(fraction * len(levels))))
    rows = []
    for i in range(n):
        perm = torch.randperm(len(levels), generator=step_generator(seed, step, first_index + i, 3))[:k]
        rows.append(levels[perm])
    return torch.stack(rows)


@dataclass
class Term:
    """One (micro-batch, noise level) term as an algorithm's loss sees it."""

    v: torch.Tensor
    """the policy's velocity at (x_t, σ), with gradients"""
    old: Callable[[], torch.Tensor]
    """the old policy's velocity there (computed when called; no gradient)"""
    x_t: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor
    sigma: torch.Tensor
    adv: torch.Tensor
    """the samples' advantages"""


def forward_update(
    adapter: VideoModelAdapter,
    batch: ForwardBatch,
    advantages_N: torch.Tensor,
    micro: list[torch.Tensor],
    stats: ForwardStats,
    *,
    loss: Callable[[Term, ForwardStats], torch.Tensor],
    seed: int,
    step: int,
    guidance_scale: float = 1.0,
    kl_beta: float = 0.0,
    model: torch.nn.Module,
    old: OldPolicy | None = None,
    reference_model: torch.nn.Module | None = None,
    accelerator: Any | None = None,
) -> float:
    """Accumulate one optimizer step's gradient over the micro-batches `micro` (sample indices into `batch`) and each
    sample's noise levels (module docstring) with the algorithm's `loss(term, stats)`; → the step's loss (the mean
    over its terms). `model` is the (prepared) transformer to differentiate; `old` the old policy (nft, awm);
    `reference_model` a frozen transformer for the KL of a full fine-tune (None: the LoRA disabled).
    `guidance_scale`: the trained velocity's (1: the conditional one)."""
    unwrapped = model.module if hasattr(model, "module") else model
    dev = adapter.device
    k_levels = batch.sigmas.shape[1]
    per_micro: dict[int, tuple[torch.Tensor, torch.Tensor, list[torch.Generator]]] = {}

    def velocity(x: torch.Tensor, sigma: torch.Tensor, idx: torch.Tensor, net: torch.nn.Module) -> torch.Tensor:
        uncond = batch.uncond.index(idx) if batch.uncond is not None else None
        return adapter.predict_velocity(x, sigma, batch.cond.index(idx), uncond, guidance_scale, model=net).float()

    def loss_fn(term: tuple[int, int]) -> torch.Tensor:
        j, k = term
        idx = micro[j]
        if j not in per_micro:  # each sample's noise generator, drawn from level by level
            gens = [step_generator(seed, step, int(i), 4) for i in batch.index[idx]]
            per_micro[j] = (batch.x0[idx].to(dev), advantages_N[idx].to(dev).float(), gens)
        x0, adv, gens = per_micro[j]
        sigma = batch.sigmas[idx, k].to(dev)
        eps = torch.stack([torch.randn(x0.shape[1:], generator=gen) for gen in gens]).to(dev)
        s = sigma.view(-1, *([1] * (x0.dim() - 1)))
        x_t = (1 - s) * x0 + s * eps
        v = velocity(x_t, sigma, idx, model)

        def v_old() -> torch.Tensor:
            if old is None:
                raise ValueError("this algorithm needs the old policy")
            if old.current:
                return v.detach()
            with torch.no_grad(), old.active(unwrapped):
                return velocity(x_t, sigma, idx, model)

        value = loss(Term(v, v_old, x_t, x0, eps, sigma, adv), stats)
        if kl_beta > 0:
            kl = velocity_kl(v, reference(model, reference_model, lambda net: velocity(x_t, sigma, idx, net)))
            value = value + kl_beta * kl
            stats.add("kl", kl)
        stats.terms += 1
        return value

    terms = [(j, k) for j in range(len(micro)) for k in range(k_levels)]
    return accumulate(terms, loss_fn, model=model, accelerator=accelerator)


def update(
    run: Any,
    ro: Rollout,
    advantages_N: torch.Tensor,
    loss: Callable[[Term, ForwardStats], torch.Tensor],
    keep: torch.Tensor | None = None,
) -> ForwardStats:
    """A forward-process algorithm's iteration update with its `loss`: this process's samples (`keep`: those the
    algorithm selects; default all) re-noised at their training levels, one optimizer step per part of the
    micro-batches; the old policy (when the run keeps one) no longer equals θ after the first."""
    cfg, acc, f = run.cfg, run.accelerator, run.cfg.forward
    run.model.train()
    n = len(advantages_N)
    index = torch.arange(run.layout.dp_rank * n, (run.layout.dp_rank + 1) * n)
    sigmas = training_sigmas(ro.sigmas, n, f.timestep_fraction, cfg.train.seed, run.step, first_index=int(index[0]))
    uncond = ro.uncond if f.guided else None
    batch = ForwardBatch(ro.latents[:, -1], ro.cond, uncond, sigmas, index)
    keep = torch.arange(n) if keep is None else keep
    stats = ForwardStats(trained=len(keep))
    parts = split_updates(micro_batches(len(keep), cfg.train.micro_batch), cfg.train.updates_per_iteration)
    parts = [[keep[m] for m in part] for part in parts] if len(keep) else []
    kw = {"loss": loss, "seed": cfg.train.seed, "step": run.step}
    kw |= {"guidance_scale": cfg.rollout.guidance_scale if f.guided else 1.0, "kl_beta": cfg.train.kl_beta}
    kw |= {"model": run.model, "old": run.old, "reference_model": run.policy.reference, "accelerator": acc}

    def after_step() -> None:
        if run.old is not None:
            run.old.current = False

    optimizer_steps(
        run.trainer,
        run.params,
        parts,
        lambda part: forward_update(run.policy.adapter, batch, advantages_N, part, stats, **kw),
        stats,
        cfg.algorithm,
        after_step,
    )
    return stats


def update_and_move_old(
    run: Any,
    ro: Rollout,
    advantages_N: torch.Tensor,
    loss: Callable[[Term, ForwardStats], torch.Tensor],
    decay: Callable[[int], float],
) -> ForwardStats:
    """`update`, then the old policy's step towards θ: old ← d·old + (1 − d)·θ with d = `decay(optimizer steps)`."""
    stats = update(run, ro, advantages_N, loss)
    run.old.update(run.accelerator.unwrap_model(run.model), decay(run.scheduler.last_epoch))
    return stats
