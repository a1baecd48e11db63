"""The forward-process update: one optimizer step of DiffusionNFT, AWM or RSFT on the policy's own clean samples.

For each micro-batch b (sample indices) and each of the K training noise levels of its samples:

    ε ~ N(0, I),   x_σ = (1 − σ)·x0 + σ·ε                      (x0: the rollout's clean latents; σ per sample)
    v_θ   = the policy's velocity at (x_σ, σ)                 (with gradients; guided by CFG when `guidance_scale` > 1)
    nft:  L = nft_loss(v_θ, v_old, x_σ, x0, σ, r(A))          (v_old: the old policy, no gradient)
    awm:  L = awm_loss(lp_θ, lp_old, A),  lp = awm_log_likelihood(v, x0, ε, σ)
    rsft: L = mean((v_θ − (ε − x0))²)                          (b holds only the selected samples)
          + β_KL·mean‖v_θ − v_ref‖²                           (β_KL > 0: v_ref = LoRA disabled, or a frozen copy)
    backward(L / (micro-batches · K))

The formulas are `vidpost.rl.forward`'s (their sources and departures are in its docstring). Where a method needs
the old policy's prediction and the old policy *is* the current one (no optimizer step since it was copied, as on
the first update of an iteration with decay 0), v_θ detached is used instead of a second forward pass: the same
value. σ and ε come from generators seeded by (seed, iteration, sample), so a resumed run draws what an
uninterrupted one does. The caller clips the gradient and steps the optimizer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vidpost.config import Fraction, PositiveInt
from vidpost.models.base import PromptEmbeds, VideoModelAdapter
from vidpost.training.ema import EMA

from .forward import awm_log_likelihood, awm_loss, nft_loss, nft_optimality, velocity_kl
from .iteration import iteration_generator

__all__ = [
    "ForwardBatch",
    "ForwardConfig",
    "ForwardStats",
    "OldPolicy",
    "forward_update",
    "lora_disabled",
    "training_sigmas",
]


@dataclass
class ForwardConfig:
    """The forward-process algorithms' settings (`algorithm: nft | awm | rsft`)."""

    timestep_fraction: Fraction = 0.6
    """K = ceil(fraction · S) of the rollout's S noise levels are trained per sample (each sample its own, at
    random; DiffusionNFT trains nearly all: 0.99)"""
    guided: bool = True
    """the trained velocity is the CFG-guided one the rollout samples with (False: the conditional velocity alone,
    as DiffusionNFT's CFG-free recipe; then sample with guidance 1)"""
    nft_beta: float = 1.0
    """DiffusionNFT's β: how far the implicit positive / negative policies sit from the old one"""
    old_decay_rate: float = 0.001
    old_decay_cap: float = 0.5
    """the old policy after each iteration: old ← d·old + (1 − d)·θ, d = min(rate · optimizer steps, cap)
    (DiffusionNFT's defaults; rate 0 keeps old = θ at every rollout, which AWM and RSFT always do)"""
    awm_weighting: Literal["uniform", "t", "ghuber"] = "uniform"
    """AWM's per-sample likelihood transform (`awm_log_likelihood`)"""
    rsft_k: PositiveInt | None = 1
    """RSFT: keep each group's best k samples by advantage (null: no per-group cut)"""
    rsft_min_advantage: float | None = None
    """RSFT: keep only samples with advantage ≥ this (null: no threshold); with rsft_k, both apply"""
    draft_steps: int = 1
    """DRaFT-K: backpropagate the differentiable reward through the last K sampling steps"""


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
        perm = torch.randperm(len(levels), generator=iteration_generator(seed, step, first_index + i, 3))[:k]
        rows.append(levels[perm])
    return torch.stack(rows)


def _velocity(adapter, x, sigma, batch: ForwardBatch, idx, guidance_scale, model) -> torch.Tensor:
    uncond = batch.uncond.index(idx) if batch.uncond is not None else None
    return adapter.predict_velocity(x, sigma, batch.cond.index(idx), uncond, guidance_scale, model=model).float()


@contextlib.contextmanager
def lora_disabled(model: torch.nn.Module) -> Iterator[None]:
    """The (possibly DDP-wrapped) model with its LoRA adapters off: the reference policy of a LoRA run."""
    unwrapped = model.module if hasattr(model, "module") else model
    unwrapped.disable_adapters()
    try:
        yield
    finally:
        unwrapped.enable_adapters()


def forward_update(
    adapter: VideoModelAdapter,
    batch: ForwardBatch,
    advantages_N: torch.Tensor,
    micro: list[torch.Tensor],
    stats: ForwardStats,
    *,
    algorithm: Literal["nft", "awm", "rsft"],
    cfg: ForwardConfig,
    seed: int,
    step: int,
    guidance_scale: float = 1.0,
    clip_range: float = 1e-3,
    adv_clip: float = 5.0,
    kl_beta: float = 0.0,
    model: torch.nn.Module,
    old: OldPolicy | None = None,
    reference: torch.nn.Module | None = None,
    accelerator: Any | None = None,
) -> float:
    """Accumulate one optimizer step's gradient over the micro-batches `micro` (sample indices into `batch`) and each
    sample's noise levels (module doc); → the step's loss (mean over its terms). `model` is the (prepared)
    transformer to differentiate; `old` the old policy (nft, awm); `reference` a frozen transformer for the KL of a
    full fine-tune (None: the LoRA disabled)."""
    backward = accelerator.backward if accelerator is not None else torch.Tensor.backward
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    sync_every = accelerator is None or accelerator.num_processes == 1
    unwrapped = model.module if hasattr(model, "module") else model
    g = guidance_scale if cfg.guided else 1.0
    k_levels = batch.sigmas.shape[1]
    denom = len(micro) * k_levels
    loss_sum = 0.0
    dev = adapter.device
    for j, idx in enumerate(micro):
        x0 = batch.x0[idx].to(dev)
        adv = advantages_N[idx].to(dev).float()
        gens = [iteration_generator(seed, step, int(i), 4) for i in batch.index[idx]]
        for k in range(k_levels):
            last = j == len(micro) - 1 and k == k_levels - 1
            ctx = accelerator.no_sync(model) if not (sync_every or last) else contextlib.nullcontext()
            sigma = batch.sigmas[idx, k].to(dev)
            eps = torch.stack([torch.randn(x0.shape[1:], generator=gen) for gen in gens]).to(dev)
            s = sigma.view(-1, *([1] * (x0.dim() - 1)))
            x_t = (1 - s) * x0 + s * eps
            with ctx, autocast():
                v = _velocity(adapter, x_t, sigma, batch, idx, g, model)
                if algorithm in ("nft", "awm"):
                    if old is None:
                        raise ValueError(f"{algorithm} needs the old policy")
                    if old.current:
                        v_old = v.detach()
                    else:
                        with torch.no_grad(), old.active(unwrapped):
                            v_old = _velocity(adapter, x_t, sigma, batch, idx, g, model)
                if algorithm == "nft":
                    r = nft_optimality(adv, adv_clip)
                    loss, parts = nft_loss(v, v_old, x_t, x0, sigma, r, beta=cfg.nft_beta, adv_clip=adv_clip)
                    stats.add("positive", parts["positive"])
                    stats.add("negative", parts["negative"])
                    stats.add("old_deviation", (v.detach() - v_old).pow(2).flatten(1).mean(1))
                elif algorithm == "awm":
                    lp = awm_log_likelihood(v, x0, eps, sigma, weighting=cfg.awm_weighting)
                    lp_old = awm_log_likelihood(v_old, x0, eps, sigma, weighting=cfg.awm_weighting)
                    loss, ratio = awm_loss(lp, lp_old, adv, clip_range=clip_range)
                    stats.add("ratio", ratio)
                else:
                    loss = (v - (eps - x0)).pow(2).flatten(1).mean(1).mean()
                if kl_beta > 0:
                    with torch.no_grad():
                        if reference is not None:
                            v_ref = _velocity(adapter, x_t, sigma, batch, idx, g, reference)
                        else:
                            with lora_disabled(model):
                                v_ref = _velocity(adapter, x_t, sigma, batch, idx, g, model)
                    kl = velocity_kl(v, v_ref)
                    loss = loss + kl_beta * kl
                    stats.add("kl", kl)
                backward(loss / denom)
            loss_sum += float(loss.detach()) / denom
            stats.terms += 1
    return loss_sum
