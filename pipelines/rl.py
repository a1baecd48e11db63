"""Stage 2 — RL for video flow models (LoRA or full), with a reward-hacking guard; one loop, five algorithms.

    vidpost rl --config configs/shapes/rl-nft.yaml [dotted.overrides=...] [--resume latest]
    accelerate launch --config_file configs/accelerate/ddp.yaml -m vidpost.pipelines.rl --config ...

One iteration (the loop below, on the trainer core `vidpost.training.loop`):
  1. prompts   ← P prompts, drawn by a generator seeded by (seed, iteration) from the prompt pool; over all processes
                 the global batch is P·processes prompts, each process owns P of them (`rl.iteration`).
  2. rollout   ← for each prompt, G = `group_size` trajectories x_0 → x_S under no_grad (`rl.rollout`): SDE steps
                 (`rollout.sde`: dance / flow / cps) inside `rollout.sde_window`, ODE steps elsewhere (`ode`: all);
                 CFG inside the step; one shared initial noise per group or one per sample. The forward-process
                 methods nft and awm roll out with the old policy.
  3. rewards   ← every reward of `rewards.spec` on the decoded videos (in-process, or on a `RewardServer`), gathered
                 from all processes.
  4. advantage ← per reward, A_k = clamp((r_k − mean_g)/(std_g + ε), ±clip) over each group g (or the global std);
                 A = Σ_k w_k·A_k (`per_reward_advantages`), or the same on the weighted total (`rl.advantages`).
  5. update    ← the algorithm's (`vidpost.rl.algorithms.<algorithm>`, each file's docstring is its exact update):
                 grpo (the SDE steps' clipped policy gradient), nft (DiffusionNFT), awm (advantage-weighted
                 matching), rsft (rejection-sampling fine-tuning), draft (reward backprop through the last K steps);
                 all on one scaffold (`rl.scaffold`: micro-batches, no_sync, autocast, the KL to the reference, one
                 optimizer step per part of the micro-batches).
  6. guard     ← every `guard.every` iterations: ODE samples of the held-out prompts scored by the gold metric
                 (`guard.metric`, not a training reward); the best weights go to `best/`; a fall of more than
                 `guard.margin` below its best (or of a watched metric) stops the run (exit 4; `evaluation.guard`).
Everything random in an iteration comes from generators seeded by (seed, iteration, sample, stream), so a resumed
run equals an uninterrupted one and a ratio is exactly 1 before the first optimizer step. Checkpoints, resume, the
non-finite stop (exit 3) and the export (`final/`: a diffusers LoRA or a full model folder) are the trainer core's.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from vidpost.config import ArgumentParser
from vidpost.evaluation.guard import Guard, stop_everywhere
from vidpost.evaluation.prompts import load_prompt_pool
from vidpost.models import resolve_model_path
from vidpost.outputs import write_json
from vidpost.rl.advantages import reward_advantages, zero_std_fraction
from vidpost.rl.algorithms import algorithm_module
from vidpost.rl.algorithms.draft import differentiable_reward
from vidpost.rl.algorithms.forward import OldPolicy
from vidpost.rl.config import ALGORITHMS, RLConfig, validate
from vidpost.rl.iteration import choose_prompts
from vidpost.rl.plots import plot_rl_curves
from vidpost.rl.policy import Policy
from vidpost.rl.policy import load_policy as _load_policy
from vidpost.rl.rewards import build_training_rewards
from vidpost.rl.rollout import Rollout, policy_rollout
from vidpost.training.ema import EMA
from vidpost.training.loop import Trainer
from vidpost.training.lora import export
from vidpost.training.parallel import check_tokens, enable_sequence_parallel, scale_gradients, sp_leaders
from vidpost.training.recovery import velocity_probe
from vidpost.training.runner import (
    ExitCode,
    TrainResult,
    add_stage_arguments,
    one_run_per_output,
    parse_stage_args,
    run_stage,
)


@dataclass
class RLResult(TrainResult):
    """`TrainResult` plus why the run stopped early and the guard's evaluations."""

    stopped: str | None = None
    """the guard's stop message (exit code 4), None when the run completed"""
    guard: list[dict[str, float]] = field(default_factory=list)
    """every guard evaluation of the run, {"step", "gold", "gold/<component>", "extra/<name>"}"""
    best_step: int | None = None
    """the iteration whose weights are in `best`"""


def load_policy(cfg: RLConfig, device: torch.device | str) -> Policy:
    """The model to align, ready to train (`vidpost.rl.policy.load_policy` with this config)."""
    return _load_policy(cfg.model, cfg.lora, cfg.rollout, device, kl_reference=cfg.train.kl_beta > 0)


def compute_advantages(
    scores: dict[str, torch.Tensor], total: torch.Tensor, groups: torch.Tensor, weights: dict[str, float], cfg
) -> torch.Tensor:
    kw = {"eps": cfg.train.adv_eps, "clip": cfg.train.adv_clip, "global_std": cfg.train.global_std}
    return reward_advantages(scores, total, groups, weights, per_reward=cfg.rewards.per_reward_advantages, **kw)


@dataclass
class _Run:
    """What the steps of the loop share (made by `set_up`); the run's services are its `trainer`'s."""

    cfg: RLConfig
    trainer: Trainer
    algorithm: ModuleType
    """`vidpost.rl.algorithms.<cfg.algorithm>`: its `update(run, rollout, advantages)`"""
    policy: Policy
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    ema: EMA | None
    rewards: Any
    guard: Guard
    pool: list[str]
    old: OldPolicy | None = None
    """the old policy of nft and awm (the checkpoints keep it in the EMA's place), else None"""
    reward_fn: Any = None
    """draft's differentiable reward"""

    accelerator = property(lambda self: self.trainer.accelerator)
    optimizer = property(lambda self: self.trainer.optimizer)
    scheduler = property(lambda self: self.trainer.scheduler)
    ckpt = property(lambda self: self.trainer.ckpt)
    step = property(lambda self: self.trainer.step, doc="iterations done")
    layout = property(lambda self: self.trainer.layout, doc="prompts, noise, advantages follow its dp coordinate")
    out_dir = property(lambda self: self.trainer.out_dir)


def set_up(cfg: RLConfig, resume: str | None) -> _Run:
    """The trainer (accelerator, layout, seed), policy, optimizer and schedule, rewards, guard, prompt pool and the
    old policy when the algorithm keeps one; the state of `resume`."""
    validate(cfg)
    algorithm = algorithm_module(cfg.algorithm)
    trainer = Trainer(f"rl-{cfg.algorithm}", cfg, mixed_precision=cfg.train.mixed_precision, unit="iteration")
    if trainer.layout.degree > 1 and cfg.guard.every:
        raise ValueError(
            "the guard evaluates on the main process only: set guard.every=0 with parallel.sp_degree > 1 "
            "(evaluate the exported weights with vidpost eval / shapes-eval instead)"
        )
    policy = load_policy(cfg, trainer.device)
    size = policy.adapter.latent_shape(1, *policy.size)
    check_tokens(policy.adapter, size, trainer.layout)
    enable_sequence_parallel(policy.adapter, trainer.layout, extra=(policy.reference,))
    transformer = policy.adapter.transformer
    params = [p for p in transformer.parameters() if p.requires_grad]
    scale_gradients(params, trainer.layout)
    trainer.optimize(params, total=cfg.train.max_steps * max(1, cfg.train.updates_per_iteration))
    model = trainer.prepare(transformer)
    ema = EMA(transformer, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    old = OldPolicy(transformer) if algorithm.OLD_POLICY else None
    if ema is not None and old is not None:
        raise ValueError("train.ema_decay must be 0 here: the checkpoints keep the old policy where the EMA would go")

    rewards = build_training_rewards(cfg.rewards)
    reward_fn = differentiable_reward(rewards) if cfg.algorithm == "draft" else None
    guard_prompts = load_prompt_pool(cfg.guard.prompts, cfg.guard.max_prompts) if cfg.guard.every else []
    exporter = lambda path: export(policy.adapter, cfg, path)  # noqa: E731
    guard = Guard(
        cfg.guard, guard_prompts, size=policy.size, shift=policy.shift, out_dir=trainer.out_dir, export=exporter
    )
    if cfg.guard.every and set(cfg.guard.metric) & set(cfg.rewards.spec):
        overlap = sorted(set(cfg.guard.metric) & set(cfg.rewards.spec))
        print(f"warning: guard metric {overlap} is also a training reward", file=sys.stderr)
    pool = load_prompt_pool(cfg.rollout.prompts, cfg.rollout.pool_size)
    # the checkpoint probe: the policy's velocity on fixed noise of the rollout size, conditioned on the first prompt
    noise = torch.randn(size, generator=torch.Generator().manual_seed(cfg.train.seed))
    cond = policy.adapter.encode_prompt(pool[:1])
    probe = velocity_probe(policy.adapter, noise.to(trainer.device), cond, autocast=trainer.accelerator.autocast)
    kept = ema if ema is not None else old
    trainer.begin(resume, model=trainer.accelerator.unwrap_model(model), kept=kept, probe=probe, desc=cfg.algorithm)
    if trainer.ckpt.resumed_from is not None:
        guard.load_state_dict(json.loads((trainer.ckpt.resumed_from / "state.json").read_text()))
    run = _Run(cfg, trainer, algorithm, policy, model, params, ema, rewards, guard, pool, old, reward_fn)
    if old is not None:  # as the last iteration left it: equal to θ when its update had decay 0
        old.current = algorithm.old_decay(cfg, trainer.scheduler.last_epoch) == 0.0
    return run


def sample(run: _Run) -> Rollout:
    """Steps 1–2: this process's share of the iteration's prompts, rolled out with the policy (the old policy's
    weights while they differ from the current ones)."""
    cfg, acc, n_local = run.cfg, run.accelerator, run.cfg.rollout.prompts_per_step
    rank = run.layout.dp_rank  # the ranks of one SP group roll out the same prompts from the same noise
    prompts_all = choose_prompts(run.pool, n_local * run.layout.dp_size, cfg.train.seed, run.step)
    prompts = prompts_all[rank * n_local : (rank + 1) * n_local]
    unwrapped = acc.unwrap_model(run.model)
    use_old = run.old is not None and not run.old.current
    with run.old.active(unwrapped) if use_old else contextlib.nullcontext():
        run.model.eval()
        with acc.autocast():
            p = run.policy
            return policy_rollout(p.adapter, cfg, prompts, p.size, p.shift, run.step, rank * n_local, model=run.model)


def score(run: _Run, ro: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
    """Steps 3–4: rewards of this process's videos, gathered from every process, and the group advantages;
    → (this process's advantages, the rewards' log entries)."""
    cfg, acc = run.cfg, run.accelerator
    out = run.rewards(ro.videos.cpu(), ro.prompts)
    names = list(run.rewards.weights)
    local = torch.stack([out.score] + [out.components[k] for k in names], 1).to(acc.device)
    gathered = acc.gather(local).cpu()  # [N, 1 + K]: the weighted total, then each reward, over all processes
    if run.layout.degree > 1:  # one copy of each SP group's samples
        gathered = gathered[sp_leaders(run.layout, len(local))]
    if not torch.isfinite(gathered).all():
        bad = [k for j, k in enumerate(["total", *names]) if not torch.isfinite(gathered[:, j]).all()]
        value = float(gathered[~torch.isfinite(gathered)][0])
        raise run.ckpt.stop(f"rewards {bad}", value, run.step + 1)
    groups = torch.arange(cfg.rollout.prompts_per_step * run.layout.dp_size).repeat_interleave(cfg.rollout.group_size)
    scores = {k: gathered[:, 1 + j] for j, k in enumerate(names)}
    total = gathered[:, 0]
    adv = compute_advantages(scores, total, groups, run.rewards.weights, cfg)
    rec = {"reward": float(total.mean()), "reward_std": float(total.std())}
    rec |= {"zero_std_groups": zero_std_fraction(total, groups), "adv_abs": float(adv.abs().mean())}
    for k, v in scores.items():
        rec[f"reward/{k}"] = float(v.mean())
        rec[f"reward/{k}_std"] = float(v.std())
    rec |= {f"reward/{k}": float(v.mean()) for k, v in out.components.items() if "/" in k}
    n_mine = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    mine = run.layout.dp_rank
    return adv[mine * n_mine : (mine + 1) * n_mine], rec


def guard(run: _Run) -> str | None:
    """Step 6 when due, on the main process: the guard's evaluation (logged); → its stop message."""
    if not (run.guard.due(run.step) and run.trainer.main):
        return None
    g, stopped = run.guard.check(run.policy.adapter, run.step)
    run.trainer.log_metrics(g, "guard")
    return stopped


@one_run_per_output
def train(cfg: RLConfig, resume: str | None = None) -> RLResult:
    run = set_up(cfg, resume)
    trainer = run.trainer
    if run.step == 0:
        guard(run)  # the initial weights: the first best, nothing to compare with
    stopped = None
    while trainer.running:
        times = [time.perf_counter()]
        ro = sample(run)
        times.append(time.perf_counter())
        advantages, rewards = score(run, ro)
        times.append(time.perf_counter())
        stats = run.algorithm.update(run, ro, advantages)
        times.append(time.perf_counter())
        rec = {"loss": stats.loss, **rewards, "kl": stats.kl}
        rec |= {f"time_{k}": t1 - t0 for k, t0, t1 in zip(("sampling", "reward", "update"), times, times[1:])}
        rec |= stats.summary(cfg.train.clip_range)
        if stats.grad_norm is not None:
            rec["grad_norm"] = float(stats.grad_norm)
        shown = {"reward": f"{rec['reward']:.3f}", "loss": f"{rec['loss']:.4g}"}
        trainer.end_step(rec, check=False, checkpoint=False, postfix=shown)  # the update checked each of its steps
        stopped = stop_everywhere(run.accelerator, guard(run))  # step 6, agreed by every process; then a checkpoint
        if run.ckpt.due(run.step) or (stopped and cfg.checkpoint.every):
            trainer.save(run.guard.state_dict())
        if stopped:
            break
    trainer.close_bar()
    return finish(run, stopped)


def finish(run: _Run, stopped: str | None) -> RLResult:
    """Export `final/` (EMA weights when kept), guard.json and curves.png, then the core's history.json and
    result.json; → the result."""
    cfg, acc, out_dir = run.cfg, run.accelerator, run.out_dir
    acc.wait_for_everyone()
    result = RLResult(
        kind="lora" if cfg.lora.enabled else "full",
        final=None,
        steps=run.step,
        metrics=run.guard.latest_metrics(),
        base_model=str(resolve_model_path(cfg.model.path).resolve()),
        stopped=stopped,
        guard=run.guard.history,
    )
    if run.trainer.main:
        if run.ema is not None:
            run.ema.copy_to(acc.unwrap_model(run.model))
        result.final = export(run.policy.adapter, cfg, out_dir / "final")
        if (out_dir / "best").exists():
            result.best, result.best_step = out_dir / "best", run.guard.best_step
        write_json(out_dir / "guard.json", run.guard.history, indent=1)
        plot_rl_curves(run.trainer.whole_history, run.guard.history, out_dir / "curves.png")
    if hasattr(run.rewards, "close"):
        run.rewards.close()
    return run.trainer.finish(result)


# ---- command line -------------------------------------------------------------------------------------------------


def command_exit(code: int, result: RLResult | None) -> int:
    """A command's exit code after `run_stage`: a guard stop prints its message (exit 4), a finished run where its
    weights are."""
    if result is not None and result.stopped:
        print(f"stopped: {result.stopped}", file=sys.stderr)
        return ExitCode.GUARD_STOP
    if result is not None and result.final is not None:
        print(f"done: {result.steps} iterations; weights in {result.final}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="vidpost rl",
        description=f"RL for video flow models (LoRA or full); algorithm: {', '.join(ALGORITHMS)}.",
    )
    add_stage_arguments(p, "configs/<model>/rl-<algorithm>.yaml")
    return command_exit(*run_stage(RLConfig, train, parse_stage_args(p, argv)))


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
