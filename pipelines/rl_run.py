"""The machinery every `vidpost rl` algorithm shares (GRPO's loop, steps 1–3 and 6 of `vidpost.pipelines.grpo`):
the run's set-up (accelerator, policy, optimizer, rewards, guard, prompt pool, checkpoints and resume), the rollout
and scoring of an iteration, its log record, the guard and checkpoints, the loop itself and the export at its end.
An algorithm supplies its rollout (`sample_fn`) and its update (`update_fn`) to `run_loop`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vidpost.models import resolve_model_path
from vidpost.outputs import write_json
from vidpost.rl.advantages import reward_advantages, zero_std_fraction
from vidpost.rl.iteration import choose_prompts
from vidpost.rl.plots import plot_rl_curves
from vidpost.rl.policy import Policy
from vidpost.rl.policy import load_policy as _load_policy
from vidpost.rl.prompts import load_prompt_pool
from vidpost.rl.rewards import build_training_rewards
from vidpost.rl.rollout import Rollout, iteration_rollout
from vidpost.training.ema import EMA
from vidpost.training.guard import Guard, stop_everywhere
from vidpost.training.loop import Trainer
from vidpost.training.lora import export
from vidpost.training.parallel import (
    Layout,
    check_tokens,
    enable_sequence_parallel,
    scale_gradients,
    sp_leaders,
)
from vidpost.training.recovery import velocity_probe
from vidpost.training.runner import TrainResult

if TYPE_CHECKING:
    from vidpost.pipelines.grpo import GRPOConfig


@dataclass
class GRPOResult(TrainResult):
    """`TrainResult` plus why the run stopped early and the guard's evaluations."""

    stopped: str | None = None
    """the guard's stop message (exit code 4), None when the run completed"""
    guard: list[dict[str, float]] = field(default_factory=list)
    """every guard evaluation of the run, {"step", "gold", "gold/<component>", "extra/<name>"}"""
    best_step: int | None = None
    """the iteration whose weights are in `best`"""


# ---- pieces (also used by `vidpost grpo-snr`) ---------------------------------------------------------------------


def load_policy(cfg: GRPOConfig, device: torch.device | str) -> Policy:
    """The model to align, ready to train (`vidpost.rl.policy.load_policy` with this config)."""
    return _load_policy(cfg.model, cfg.lora, cfg.rollout, device, kl_reference=cfg.train.kl_beta > 0)


def policy_rollout(
    adapter, cfg: GRPOConfig, prompts: list[str], size, shift: float, step: int, first_index: int = 0, model=None
) -> Rollout:
    """Iteration `step`'s rollout of `prompts` (global indices from `first_index`), transformer calls chunked like
    the update's micro-batches (so the update recomputes each log-prob bit-identically)."""
    kw = {"seed": cfg.train.seed, "step": step, "first_index": first_index, "chunk_size": cfg.train.micro_batch}
    return iteration_rollout(adapter, cfg.rollout, prompts, size, shift, model=model, **kw)


def compute_advantages(
    scores: dict[str, torch.Tensor], total: torch.Tensor, groups: torch.Tensor, weights: dict[str, float], cfg
) -> torch.Tensor:
    kw = {"eps": cfg.train.adv_eps, "clip": cfg.train.adv_clip, "global_std": cfg.train.global_std}
    return reward_advantages(scores, total, groups, weights, per_reward=cfg.rewards.per_reward_advantages, **kw)


@dataclass
class _Run:
    """What the steps of the loop share (made by `set_up`); the run's services are its `trainer`'s."""

    cfg: GRPOConfig
    trainer: Trainer
    policy: Policy
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    ema: EMA | None
    rewards: Any
    guard: Guard
    pool: list[str]
    old: Any = None
    """the old policy of the forward-process algorithms (`vidpost.rl.forward_update.OldPolicy`), else None"""

    @property
    def accelerator(self) -> Any:
        return self.trainer.accelerator

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.trainer.optimizer

    @property
    def scheduler(self) -> Any:
        return self.trainer.scheduler

    @property
    def ckpt(self) -> Any:
        return self.trainer.ckpt

    @property
    def step(self) -> int:
        """iterations done"""
        return self.trainer.step

    @property
    def layout(self) -> Layout:
        """the sequence-parallel layout: prompts, noise and advantages follow its data-parallel coordinate"""
        return self.trainer.layout

    @property
    def out_dir(self) -> Path:
        return self.trainer.out_dir


def set_up(cfg: GRPOConfig, resume: str | None, old_policy: Any = None, name: str = "grpo") -> _Run:
    """The trainer (accelerator, layout, seed), policy, optimizer and schedule, rewards, guard and prompt pool; the
    state of `resume`. `old_policy` (a class taking the transformer, e.g. `OldPolicy`) makes a copy of the
    trainable weights that the checkpoints keep in the EMA's place (so the two cannot be combined). `name`: the
    algorithm (the trackers' and the progress bar's name: rl-<name>)."""
    trainer = Trainer(f"rl-{name}", cfg, mixed_precision=cfg.train.mixed_precision, unit="iteration")
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
    old = old_policy(transformer) if old_policy is not None else None
    if ema is not None and old is not None:
        raise ValueError("train.ema_decay must be 0 here: the checkpoints keep the old policy where the EMA would go")

    rewards = build_training_rewards(cfg.rewards)
    guard_prompts = load_prompt_pool(cfg.guard.prompts, cfg.guard.max_prompts) if cfg.guard.every else []
    exporter = lambda path: export(policy.adapter, cfg, path)  # noqa: E731
    out_dir = trainer.out_dir
    guard = Guard(cfg.guard, guard_prompts, size=policy.size, shift=policy.shift, out_dir=out_dir, export=exporter)
    if cfg.guard.every and set(cfg.guard.metric) & set(cfg.rewards.spec):
        overlap = sorted(set(cfg.guard.metric) & set(cfg.rewards.spec))
        print(f"warning: guard metric {overlap} is also a training reward", file=sys.stderr)
    pool = load_prompt_pool(cfg.rollout.prompts, cfg.rollout.pool_size)
    # the checkpoint probe: the policy's velocity on fixed noise of the rollout size, conditioned on the first prompt
    noise = torch.randn(
        policy.adapter.latent_shape(1, *policy.size), generator=torch.Generator().manual_seed(cfg.train.seed)
    )
    cond = policy.adapter.encode_prompt(pool[:1])
    probe = velocity_probe(policy.adapter, noise.to(trainer.device), cond, autocast=trainer.accelerator.autocast)
    kept = ema if ema is not None else old
    unwrapped = trainer.accelerator.unwrap_model(model)
    trainer.begin(resume, model=unwrapped, kept=kept, probe=probe, desc=name)
    if trainer.ckpt.resumed_from is not None:
        guard.load_state_dict(json.loads((trainer.ckpt.resumed_from / "state.json").read_text()))
    return _Run(cfg, trainer, policy, model, params, ema, rewards, guard, pool, old)


def sample(run: _Run) -> Rollout:
    """Steps 1–2: this process's share of the iteration's prompts, rolled out with the current policy."""
    cfg, acc, n_local = run.cfg, run.accelerator, run.cfg.rollout.prompts_per_step
    rank = run.layout.dp_rank  # the ranks of one SP group roll out the same prompts from the same noise
    prompts_all = choose_prompts(run.pool, n_local * run.layout.dp_size, cfg.train.seed, run.step)
    prompts = prompts_all[rank * n_local : (rank + 1) * n_local]
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


def record(run: _Run, rewards: dict[str, float], stats: Any, times: list[float]) -> dict[str, float]:
    """The iteration's log record: loss, rewards and advantages, KL, lr, timings, the update's statistics (`loss`, `kl`,
    `summary(clip_range)`, `grad_norm`: `UpdateStats` or `ForwardStats`)."""
    rec = {"loss": stats.loss, **rewards, "kl": stats.kl, "lr": run.scheduler.get_last_lr()[0]}
    for k, t0, t1 in zip(("sampling", "reward", "update"), times, times[1:]):
        rec[f"time_{k}"] = t1 - t0
    rec |= stats.summary(run.cfg.train.clip_range)
    if stats.grad_norm is not None:
        rec["grad_norm"] = float(stats.grad_norm)
    return rec


def guard(run: _Run) -> str | None:
    """Step 6 when due, on the main process: the guard's evaluation (logged); → its stop message."""
    if not (run.guard.due(run.step) and run.accelerator.is_main_process):
        return None
    g, stopped = run.guard.check(run.policy.adapter, run.step)
    run.accelerator.log({f"guard/{k}": v for k, v in g.items()}, step=run.step)
    return stopped


def guard_and_checkpoint(run: _Run) -> str | None:
    """Step 6, then a checkpoint when due (or when stopping); → the stop message, agreed by every process."""
    stopped = stop_everywhere(run.accelerator, guard(run))
    if run.ckpt.due(run.step) or (stopped and run.cfg.checkpoint.every):
        run.trainer.save(run.guard.state_dict())
    return stopped


def run_loop(run: _Run, sample_fn, update_fn) -> GRPOResult:
    """Iterations until `train.max_steps` or a guard stop: sample (steps 1–2), score (3–4), update (5), log, guard
    and checkpoint (6); then `finish`. `update_fn(run, rollout, advantages)` returns the update's statistics
    (`loss`, `kl`, `grad_norm`, `summary(clip_range)`)."""
    trainer = run.trainer
    if run.step == 0:
        guard(run)  # the initial weights: the first best, nothing to compare with
    stopped = None
    while trainer.running:
        times = [time.perf_counter()]
        ro = sample_fn(run)
        times.append(time.perf_counter())
        advantages, rewards = score(run, ro)
        times.append(time.perf_counter())
        stats = update_fn(run, ro, advantages)
        times.append(time.perf_counter())
        rec = record(run, rewards, stats, times)
        shown = {"reward": f"{rec['reward']:.3f}", "loss": f"{rec['loss']:.4g}"}
        trainer.end_step(rec, check=False, checkpoint=False, postfix=shown)  # the update checked each of its steps
        stopped = guard_and_checkpoint(run)
        if stopped:
            break
    trainer.close_bar()
    return finish(run, stopped)


def finish(run: _Run, stopped: str | None) -> GRPOResult:
    """Export `final/` (EMA weights when kept), guard.json and curves.png, then the core's history.json and
    result.json; → the result."""
    cfg, acc, out_dir = run.cfg, run.accelerator, run.out_dir
    acc.wait_for_everyone()
    result = GRPOResult(
        kind="lora" if cfg.lora.enabled else "full",
        final=None,
        steps=run.step,
        metrics=run.guard.latest_metrics(),
        base_model=str(resolve_model_path(cfg.model.path).resolve()),
        stopped=stopped,
        guard=run.guard.history,
    )
    if acc.is_main_process:
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


def command_exit(code: int, result: GRPOResult | None) -> int:
    """A command's exit code after `run_stage`: a guard stop prints its message (exit 4), a finished run where its
    weights are."""
    from vidpost.training.runner import ExitCode

    if result is not None and result.stopped:
        print(f"stopped: {result.stopped}", file=sys.stderr)
        return ExitCode.GUARD_STOP
    if result is not None and result.final is not None:
        print(f"done: {result.steps} iterations; weights in {result.final}", file=sys.stderr)
    return code
