"""Stage 2 — RL with a choice of algorithm: GRPO, a forward-process method (DiffusionNFT, AWM, RSFT) or reward
backprop (DRaFT-K).

    vidpost rl --config configs/shapes/rl-nft.yaml [dotted.overrides=...] [--resume latest]
    accelerate launch --config_file configs/accelerate/ddp.yaml -m vidpost.pipelines.rl --config ...

`algorithm: grpo` is `vidpost grpo` (SDE rollouts, the chain's log-probs, PPO's clipped ratio;
`vidpost.pipelines.grpo`; the shared loop: `vidpost.pipelines.rl_run`). The forward-process algorithms never need a likelihood of the sampling chain: they
train the flow-matching objective on the policy's own clean samples, re-noised (`vidpost.rl.forward` has each
loss, its source and where ours departs). One iteration:
  1. prompts   ← as GRPO: P per process, drawn by (seed, iteration).
  2. rollout   ← `group_size` samples per prompt with any sampler — by default ODE steps (`rollout.sde: ode`) from
                 independent initial noises (`rollout.shared_noise: false`; an ODE group from one noise would be
                 G copies) — by the old policy θ_old (nft; the current weights for awm and rsft). Only the clean
                 latents x0 are used.
  3. rewards   ← as GRPO: every reward on the decoded videos, gathered, group advantages A.
  4. update    ← each sample is trained at K = ceil(`forward.timestep_fraction` · S) of the rollout's noise levels
                 (its own, at random) with fresh noise (`vidpost.rl.forward_update.forward_update`):
                   nft:  DiffusionNFT's implicit positive / negative policy loss, optimality r = A / (2·adv_clip) + ½
                   awm:  PPO's clipped surrogate on the flow-matching likelihood, advantage-weighted
                   rsft: the plain flow-matching loss on each group's best `forward.rsft_k` samples (and/or those
                         with A ≥ `forward.rsft_min_advantage`)
                 + `train.kl_beta`·mean‖v_θ − v_ref‖²; the micro-batches split into `train.updates_per_iteration`
                 optimizer steps (clipped gradient, AdamW).
  5. old policy ← nft: θ_old ← d·θ_old + (1 − d)·θ with d = min(`forward.old_decay_rate` · optimizer steps,
                 `forward.old_decay_cap`) (DiffusionNFT's schedule; d = 0 at first, so θ_old follows θ, then lags);
                 awm: θ_old ← θ (its ratio compares the update's weights with the sampling ones: exactly 1 on the
                 first optimizer step of an iteration, clipped on later ones).
  6. guard and checkpoints ← as GRPO (the checkpoint keeps θ_old, so a resumed run equals an uninterrupted one).

`algorithm: draft` rolls out like the forward-process methods (ODE), then backpropagates its differentiable rewards
(`brightness`, `verifier_soft`, …) through the last `forward.draft_steps` sampling steps and the VAE decoder
(`vidpost.rl.draft`); the advantages are only logged.

Departures: the trained velocity is by default the CFG-guided one the rollout samples with (`forward.guided`;
DiffusionNFT trains and samples CFG-free, which a model that needs guidance cannot start from); one pass over each
rollout (its `num_inner_epochs` 1); the old policy is updated once per iteration (as the reference, after its
optimizer steps).
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch

from vidpost.config import ArgumentParser
from vidpost.pipelines import grpo
from vidpost.pipelines.grpo import GRPOConfig
from vidpost.pipelines.rl_run import GRPOResult, _Run, command_exit, run_loop, set_up
from vidpost.pipelines.rl_run import sample as rollout_and_decode
from vidpost.rl.draft import differentiable_reward, draft_update
from vidpost.rl.forward import old_policy_decay, rsft_select
from vidpost.rl.forward_update import (
    ForwardBatch,
    ForwardConfig,
    ForwardStats,
    OldPolicy,
    forward_update,
    training_sigmas,
)
from vidpost.rl.iteration import micro_batches, split_updates
from vidpost.rl.rollout import Rollout
from vidpost.training.runner import add_stage_arguments, one_run_per_output, parse_stage_args, run_stage

ALGORITHMS = ("grpo", "nft", "awm", "rsft", "draft")


@dataclass
class RLConfig(GRPOConfig):
    output_dir: str = "runs/rl"
    algorithm: Literal["grpo", "nft", "awm", "rsft", "draft"] = "grpo"
    """grpo (SDE rollouts, log-probs), a forward-process method: nft (DiffusionNFT), awm (advantage-weighted
    matching), rsft (rejection-sampling fine-tuning), or draft (reward backprop through the last sampling steps)"""
    forward: ForwardConfig = field(default_factory=ForwardConfig)


def validate(cfg: RLConfig) -> None:
    """One-line errors for settings an algorithm cannot run with."""
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {cfg.algorithm!r}: use one of {', '.join(ALGORITHMS)}")
    if cfg.algorithm == "grpo" and cfg.rollout.sde == "ode":
        raise ValueError("algorithm grpo needs SDE steps to train (rollout.sde: dance, flow or cps)")
    if (
        cfg.algorithm != "grpo"
        and cfg.rollout.sde == "ode"
        and cfg.rollout.shared_noise
        and cfg.rollout.group_size > 1
    ):
        raise ValueError("ODE rollouts from one shared noise per group are identical: set rollout.shared_noise=false")
    if cfg.algorithm == "rsft" and cfg.forward.rsft_k is None and cfg.forward.rsft_min_advantage is None:
        raise ValueError("algorithm rsft needs forward.rsft_k or forward.rsft_min_advantage")
    if cfg.algorithm == "draft" and cfg.rollout.sde != "ode":
        raise ValueError("algorithm draft differentiates the ODE sampler: set rollout.sde=ode")
    if cfg.algorithm == "draft" and not 1 <= cfg.forward.draft_steps <= cfg.rollout.steps:
        raise ValueError(f"forward.draft_steps must be in 1..{cfg.rollout.steps} (rollout.steps)")
    if cfg.algorithm == "nft" and cfg.forward.nft_beta <= 0:
        raise ValueError(f"forward.nft_beta must be positive (got {cfg.forward.nft_beta})")
    if not 0 < cfg.forward.timestep_fraction <= 1:
        raise ValueError(f"forward.timestep_fraction must be in (0, 1] (got {cfg.forward.timestep_fraction})")


def _old_decay(cfg: RLConfig, optimizer_steps: int) -> float:
    """The decay of the old policy's update after `optimizer_steps` optimizer steps (0 for awm: θ_old ← θ)."""
    f = cfg.forward
    return old_policy_decay(optimizer_steps, f.old_decay_rate, f.old_decay_cap) if cfg.algorithm == "nft" else 0.0


def sample(run: _Run) -> Rollout:
    """Steps 1–2 with the old policy's weights (when they differ from the current ones)."""
    unwrapped = run.accelerator.unwrap_model(run.model)
    use_old = run.old is not None and not run.old.current
    with run.old.active(unwrapped) if use_old else contextlib.nullcontext():
        return rollout_and_decode(run)


def _optimizer_steps(run: _Run, parts: list, accumulate, stats: ForwardStats) -> None:
    """One optimizer step per part: `accumulate(part)` builds its gradient and returns its loss; then the gradient
    is clipped and AdamW steps (the old policy no longer equals θ)."""
    cfg, acc = run.cfg, run.accelerator
    for part in parts:
        loss = accumulate(part)
        run.ckpt.check_finite(f"{cfg.algorithm} loss", loss, run.step + 1)
        stats.loss += loss / len(parts)
        grad_norm = None
        if cfg.optim.max_grad_norm:
            grad_norm = float(acc.clip_grad_norm_(run.params, cfg.optim.max_grad_norm))
            stats.grad_norms.append(grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        if run.old is not None:
            run.old.current = False
        run.ckpt.check_step(run.step + 1, grad_norm=grad_norm)


def update(run: _Run, ro: Rollout, advantages_N: torch.Tensor) -> ForwardStats:
    """Steps 4–5: the forward-process update of this process's samples, then the old policy's update."""
    cfg, acc, f = run.cfg, run.accelerator, run.cfg.forward
    run.model.train()
    n = len(advantages_N)
    index = torch.arange(run.layout.dp_rank * n, (run.layout.dp_rank + 1) * n)
    sigmas = training_sigmas(ro.sigmas, n, f.timestep_fraction, cfg.train.seed, run.step, first_index=int(index[0]))
    uncond = ro.uncond if f.guided else None
    batch = ForwardBatch(ro.latents[:, -1], ro.cond, uncond, sigmas, index)
    keep = torch.arange(n)
    if cfg.algorithm == "rsft":
        keep = rsft_select(advantages_N, ro.groups, k=f.rsft_k, threshold=f.rsft_min_advantage)
    stats = ForwardStats(trained=len(keep))
    parts = split_updates(micro_batches(len(keep), cfg.train.micro_batch), cfg.train.updates_per_iteration)
    parts = [[keep[m] for m in part] for part in parts] if len(keep) else []
    kw = {"algorithm": cfg.algorithm, "cfg": f, "seed": cfg.train.seed, "step": run.step}
    kw |= {"guidance_scale": cfg.rollout.guidance_scale, "clip_range": cfg.train.clip_range}
    kw |= {"adv_clip": cfg.train.adv_clip, "kl_beta": cfg.train.kl_beta, "model": run.model, "old": run.old}
    kw |= {"reference": run.policy.reference, "accelerator": acc}
    _optimizer_steps(
        run, parts, lambda p: forward_update(run.policy.adapter, batch, advantages_N, p, stats, **kw), stats
    )
    if run.old is not None:
        run.old.update(acc.unwrap_model(run.model), _old_decay(cfg, run.scheduler.last_epoch))
    return stats


def update_draft(run: _Run, ro: Rollout, advantages_N: torch.Tensor, *, reward_fn) -> ForwardStats:
    """Step 4 of draft: reward backprop through the rollout's last `forward.draft_steps` steps (the advantages are
    only logged)."""
    cfg = run.cfg
    run.model.train()
    stats = ForwardStats(trained=len(advantages_N))
    parts = split_updates(micro_batches(len(advantages_N), cfg.train.micro_batch), cfg.train.updates_per_iteration)
    kw = {"k_steps": cfg.forward.draft_steps, "reward_fn": reward_fn, "guidance_scale": cfg.rollout.guidance_scale}
    kw |= {"kl_beta": cfg.train.kl_beta, "model": run.model, "reference": run.policy.reference}
    kw |= {"accelerator": run.accelerator}
    _optimizer_steps(run, parts, lambda p: draft_update(run.policy.adapter, ro, p, stats, **kw), stats)
    return stats


@one_run_per_output
def train(cfg: RLConfig, resume: str | None = None) -> GRPOResult:
    validate(cfg)
    if cfg.algorithm == "grpo":
        return grpo.train(cfg, resume)
    old_policy = OldPolicy if cfg.algorithm in ("nft", "awm") else None
    run = set_up(cfg, resume, old_policy=old_policy, name=cfg.algorithm)
    if cfg.algorithm == "draft":
        return run_loop(run, rollout_and_decode, partial(update_draft, reward_fn=differentiable_reward(run.rewards)))
    if run.old is not None:  # as the last iteration left it: equal to θ when its update had decay 0
        run.old.current = _old_decay(cfg, run.scheduler.last_epoch) == 0.0
    return run_loop(run, sample, update)


# ---- command line -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="vidpost rl",
        description=f"RL for video flow models (LoRA or full); algorithm: {', '.join(ALGORITHMS)}.",
    )
    add_stage_arguments(p, "configs/<model>/rl-<algorithm>.yaml")
    return p


def main(argv: list[str] | None = None) -> int:
    return command_exit(*run_stage(RLConfig, train, parse_stage_args(build_parser(), argv)))


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
