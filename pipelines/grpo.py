"""Stage 2 — RLHF: DanceGRPO-style GRPO for video flow models (LoRA or full), with a reward-hacking guard.

    vidpost grpo --config configs/shapes/grpo.yaml [dotted.overrides=...] [--resume latest]
    accelerate launch --config_file configs/accelerate/ddp.yaml -m vidpost.pipelines.grpo --config ...

Algorithm (one iteration = one optimizer step):
  1. prompts   ← P prompts for this iteration, drawn by a generator seeded by (seed, iteration) from the prompt
                 pool; over all processes the global batch is P·processes prompts, each process owns P of them.
  2. rollout   ← for each prompt, G = `group_size` trajectories x_0 → x_S with the policy under no_grad
                 (`vidpost.rl.rollout`): SDE steps (`rollout.sde`: "dance" / "flow" / "cps", noise level η or a)
                 inside `rollout.sde_window` (all steps by default) and ODE steps elsewhere; classifier-free
                 guidance inside the step; optionally one shared initial noise per group. The old log-probs
                 log π_old(x_{i+1} | x_i) of the SDE steps are stored with the latents.
  3. rewards   ← every reward of `rewards.spec` on the decoded videos (in-process, or on a `RewardServer`).
  4. advantage ← rewards are gathered from all processes; per reward, A_k = clamp((r_k − mean_g)/(std_g + ε), ±5)
                 over each group g (or the global std); A = Σ_k w_k·A_k (`per_reward_advantages`), or the
                 same on the weighted total reward.
  5. update    ← K = ceil(timestep_fraction · #SDE steps) of the SDE steps, chosen at random (the same steps for
                 the whole batch); for each micro-batch and each chosen step i (`vidpost.rl.update.grpo_update`):
                   logp = log π_θ(x_{i+1} | x_i)   (same SDE, same CFG, with gradients)
                   ratio = exp(logp − logp_old);   L = mean(max(−A·ratio, −A·clip(ratio, 1 − c, 1 + c)))
                   + β·KL(π_θ ‖ π_ref) with KL = ‖μ_θ − μ_ref‖²/(2·std²) (π_ref: LoRA disabled, or a frozen copy)
                 backward(L / (micro-batches · K)); then clip the gradient norm and take an AdamW step
                 (`updates_per_iteration` > 1 splits the micro-batches into that many consecutive optimizer steps).
  6. guard     ← every `guard.every` iterations: ODE samples of the held-out prompts, scored by the gold metric
                 (`guard.metric`, not a training reward); the best weights are exported to `best/`; when the
                 metric falls more than `guard.margin` below its best, or a watched extra metric (`guard.watch`)
                 more than its own margin below its best, the run stops (exit code 4; `vidpost.training.guard`).

Departures from the papers, on purpose: log-probs are reduced by the mean over latent elements, not summed;
by default one optimizer step per iteration (DanceGRPO steps per micro-batch); the trained steps are drawn per iteration
(not per sample). Everything random in an iteration comes from generators seeded by (seed, iteration, process),
so a resumed run equals an uninterrupted one and the update's ratio is exactly 1 before the first optimizer step.

Checkpoints, resume (`--resume latest`), the non-finite-loss stop (exit 3) and the export (`final/`: a diffusers
LoRA or a full model folder) work as in `vidpost sft`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import torch

from vidpost.config import ArgumentParser, Fraction, NonNegativeFloat, PositiveInt
from vidpost.pipelines.rl_run import (  # noqa: F401 (the shared pieces, also imported from here)
    GRPOResult,
    _Run,
    command_exit,
    compute_advantages,
    guard_and_checkpoint,
    load_policy,
    policy_rollout,
    run_loop,
    sample,
    score,
    set_up,
)
from vidpost.rl.iteration import choose_steps, iteration_generator, micro_batches, split_updates
from vidpost.rl.policy import PolicyModelConfig
from vidpost.rl.rewards import RewardsConfig
from vidpost.rl.rollout import Rollout, RolloutConfig, step_kwargs
from vidpost.rl.update import UpdateStats, grpo_update
from vidpost.training.config import CheckpointConfig, LogConfig, LoraConfig, OptimConfig
from vidpost.training.guard import GuardConfig
from vidpost.training.parallel import ParallelConfig
from vidpost.training.runner import add_stage_arguments, one_run_per_output, parse_stage_args, run_stage

# ---- configuration ----------------------------------------------------------------------------------------------


@dataclass
class GRPOTrainConfig:
    max_steps: PositiveInt = 100
    """iterations (one optimizer step each)"""
    micro_batch: PositiveInt = 8
    """samples per forward/backward in the update (and per transformer call in the rollout)"""
    updates_per_iteration: PositiveInt = 1
    """optimizer steps per iteration: the micro-batches are split into this many consecutive parts, each part's
    gradients (accumulated over its micro-batches and the trained steps) make one step; with more than one, the
    later parts see ratios ≠ 1 and the clipping acts"""
    timestep_fraction: Fraction = 0.6
    """fraction of the SDE steps trained per iteration"""
    clip_range: NonNegativeFloat = 1e-3
    adv_clip: NonNegativeFloat = 5.0
    adv_eps: float = 1e-4
    global_std: bool = False
    kl_beta: NonNegativeFloat = 0.0
    """weight of the KL to the reference policy (0 disables)"""
    ema_decay: Fraction = 0.0
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"


@dataclass
class GRPOConfig:
    output_dir: str = "runs/grpo"
    model: PolicyModelConfig = field(default_factory=PolicyModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    train: GRPOTrainConfig = field(default_factory=GRPOTrainConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=20, keep_last=2))
    log: LogConfig = field(default_factory=LogConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """sequence parallelism (`vidpost.training.parallel`; the guard needs sp_degree 1)"""


# ---- the GRPO update (the loop and the other steps: `vidpost.pipelines.rl_run`) ---------------------------


def update(run: _Run, ro: Rollout, advantages_N: torch.Tensor) -> UpdateStats:
    """Step 5: the trained steps, then one `grpo_update` and optimizer step per part of the micro-batches."""
    cfg, acc = run.cfg, run.accelerator
    run.model.train()
    generator = iteration_generator(cfg.train.seed, run.step, 0, 2)
    trained = choose_steps(ro.sde_steps, cfg.train.timestep_fraction, generator)
    parts = split_updates(micro_batches(len(advantages_N), cfg.train.micro_batch), cfg.train.updates_per_iteration)
    stats = UpdateStats()
    kw = {"clip_range": cfg.train.clip_range, "step_kwargs": step_kwargs(cfg.rollout), "updates": len(parts)}
    kw |= {"kl_beta": cfg.train.kl_beta, "model": run.model, "reference": run.policy.reference, "accelerator": acc}
    for part in parts:
        loss = grpo_update(run.policy.adapter, ro, advantages_N, trained, part, stats, **kw)
        run.ckpt.check_finite("GRPO loss", loss, run.step + 1)
        stats.loss += loss / len(parts)
        grad_norm = None
        if cfg.optim.max_grad_norm:
            grad_norm = float(acc.clip_grad_norm_(run.params, cfg.optim.max_grad_norm))
            stats.grad_norms.append(grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.ckpt.check_step(run.step + 1, grad_norm=grad_norm)
        if run.ema is not None:
            run.ema.update(acc.unwrap_model(run.model))
    return stats


@one_run_per_output
def train(cfg: GRPOConfig, resume: str | None = None) -> GRPOResult:
    return run_loop(set_up(cfg, resume), sample, update)


# ---- command line -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="vidpost grpo", description="GRPO for video flow models (LoRA or full).")
    add_stage_arguments(p, "configs/<model>/grpo.yaml")
    return p


def main(argv: list[str] | None = None) -> int:
    return command_exit(*run_stage(GRPOConfig, train, parse_stage_args(build_parser(), argv)))


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
