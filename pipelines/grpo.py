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
                 the whole batch); for each micro-batch and each chosen step i:
                   logp = log π_θ(x_{i+1} | x_i)   (same SDE, same CFG, with gradients)
                   ratio = exp(logp − logp_old);   L = mean(max(−A·ratio, −A·clip(ratio, 1 − c, 1 + c)))
                   + β·KL(π_θ ‖ π_ref) with KL = ‖μ_θ − μ_ref‖²/(2·std²) (π_ref: LoRA disabled, or a frozen copy)
                 backward(L / (micro-batches · K)); then clip the gradient norm and take an AdamW step
                 (`updates_per_iteration` > 1 splits the micro-batches into that many consecutive optimizer steps).
  6. guard     ← every `guard.every` iterations: ODE samples of the held-out prompts, scored by the gold metric
                 (`guard.metric`, not a training reward); the best weights are exported to `best/`; when the
                 metric falls more than `guard.margin` below its best, or a watched extra metric (`guard.watch`)
                 more than its own margin below its best, the run stops (exit code 4).

Departures from the papers, on purpose: log-probs are reduced by the mean over latent elements (DESIGN.md);
by default one optimizer step per iteration (DanceGRPO steps per micro-batch); the trained steps are drawn per iteration
(not per sample). Everything random in an iteration comes from generators seeded by (seed, iteration, process),
so a resumed run equals an uninterrupted one and the update's ratio is exactly 1 before the first optimizer step.

Checkpoints, resume (`--resume latest`), the non-finite-loss stop (exit 3) and the export (`final/`: a diffusers
LoRA or a full model folder) work as in `vidpost sft`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from vidpost.config import config_hash, to_dict
from vidpost.models import VideoModelAdapter, load, resolve_model_path
from vidpost.models.base import read_vidpost_config
from vidpost.rl.advantages import group_advantages, mix_advantages, zero_std_fraction
from vidpost.rl.loss import clipped_policy_loss, gaussian_kl, ratio_stats
from vidpost.rl.rollout import Rollout, rollout, step_log_prob
from vidpost.training.checkpoint import NoDataPosition, latest_checkpoint, load_checkpoint, save_checkpoint
from vidpost.training.config import LogConfig, LoraConfig, OptimConfig
from vidpost.training.ema import EMA
from vidpost.training.lora import add_lora, export
from vidpost.training.optim import lr_lambda, make_optimizer
from vidpost.training.runner import NonFiniteLoss, add_stage_arguments, run_stage

# ---- configuration ----------------------------------------------------------------------------------------------


@dataclass
class GRPOModelConfig:
    path: str = "shapes"
    """diffusers-format model directory or preset to align"""
    lora_init: str = ""
    """an existing diffusers LoRA folder to continue from (empty: a fresh LoRA when lora.enabled)"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    gradient_checkpointing: bool = False


@dataclass
class RolloutConfig:
    prompts: list[str] | str = "shapes-train"
    """a list of prompts, a .txt/.jsonl file, or "shapes-train" (canonical captions of the Shapes train split)"""
    pool_size: int = 2048
    """how many prompts of "shapes-train" / the file form the pool"""
    prompts_per_step: int = 4
    """prompts per process per iteration"""
    group_size: int = 8
    """samples per prompt (G)"""
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    """video size (null: the model's generation defaults)"""
    steps: int = 10
    """denoising steps of a rollout"""
    shift: float | None = None
    guidance_scale: float = 5.0
    negative_prompt: str = ""
    sde: Literal["dance", "flow", "cps"] = "dance"
    noise_level: float = 0.3
    """η for "dance" and "cps", a for "flow\""""
    sde_window: list[int] | None = None
    """[start, end): SDE on these steps only, ODE elsewhere (null: all steps)"""
    shared_noise: bool = True
    """one initial noise per group"""


@dataclass
class RewardsConfig:
    spec: dict[str, Any] = field(default_factory=lambda: {"verifier": 1.0})
    """reward name → weight, or → {weight, type, path, ...options} (see vidpost.rewards.base.build_rewards)"""
    per_reward_advantages: bool = True
    """normalise each reward within its group, then mix the advantages with the weights"""
    server: bool = False
    """score in separate worker processes (RewardServer) instead of in-process"""
    workers: int = 1
    devices: list[str] | None = None


@dataclass
class GRPOTrainConfig:
    max_steps: int = 100
    """iterations (one optimizer step each)"""
    micro_batch: int = 8
    """samples per forward/backward in the update (and per transformer call in the rollout)"""
    updates_per_iteration: int = 1
    """optimizer steps per iteration: the micro-batches are split into this many consecutive parts, each part's
    gradients (accumulated over its micro-batches and the trained steps) make one step; with more than one, the
    later parts see ratios ≠ 1 and the clipping acts"""
    timestep_fraction: float = 0.6
    """fraction of the SDE steps trained per iteration"""
    clip_range: float = 1e-3
    adv_clip: float = 5.0
    adv_eps: float = 1e-4
    global_std: bool = False
    kl_beta: float = 0.0
    """weight of the KL to the reference policy (0 disables)"""
    ema_decay: float = 0.0
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"


@dataclass
class GuardConfig:
    every: int = 10
    """evaluate the gold metric every N iterations (0 disables the guard)"""
    prompts: list[str] | str = "shapes-heldout"
    max_prompts: int = 32
    metric: dict[str, Any] = field(default_factory=lambda: {"verifier_binary": 1.0})
    """the gold metric as a reward spec (weighted mean over the prompts); must not be a training reward"""
    margin: float = 0.1
    """stop when the metric falls more than this below its best"""
    steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=lambda: {"temporal": 1.0})
    """further rewards logged on the same videos"""
    watch: dict[str, float] = field(default_factory=dict)
    """`extra` name → margin: also stop when that metric falls more than its margin below its best so far (e.g. the
    training reward itself on the held-out prompts, which a noisy policy gradient can walk downhill while the gold
    metric holds); `best/` stays the gold metric's best"""


@dataclass
class GRPOCheckpointConfig:
    every: int = 20
    keep_last: int = 2


@dataclass
class GRPOConfig:
    output_dir: str = "runs/grpo"
    model: GRPOModelConfig = field(default_factory=GRPOModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    train: GRPOTrainConfig = field(default_factory=GRPOTrainConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    checkpoint: GRPOCheckpointConfig = field(default_factory=GRPOCheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


class GuardTripped(RuntimeError):
    pass


# ---- pieces -------------------------------------------------------------------------------------------------------


def iteration_generator(seed: int, step: int, index: int, stream: int) -> torch.Generator:
    """The generator of `stream` (0: prompt choice, 1: a group's rollout noise, 2: trained steps) for item `index`
    (the prompt's index in the global batch) of iteration `step`."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 65_536 + index) * 8 + stream)


def load_prompt_pool(spec: list[str] | str, pool_size: int) -> list[str]:
    if isinstance(spec, list):
        if not spec:
            raise ValueError("rollout.prompts is empty")
        return list(spec)
    if spec == "shapes-train":
        from vidpost.shapes.splits import train_specs

        return [it["caption"] for it in train_specs(pool_size)]
    if spec == "shapes-heldout":
        from vidpost.shapes.splits import heldout_prompts

        return [it["caption"] for it in heldout_prompts()][:pool_size]
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"rollout.prompts: {spec!r} is neither a known set nor an existing file")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r.get("prompt") or r["caption"] for r in rows][:pool_size]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()][:pool_size]


def choose_prompts(pool: list[str], n_global: int, seed: int, step: int) -> list[str]:
    g = iteration_generator(seed, step, 0, 0)
    idx = torch.randperm(len(pool), generator=g)[: min(n_global, len(pool))]
    if len(idx) < n_global:  # small pool: sample with replacement
        idx = torch.randint(len(pool), (n_global,), generator=g)
    return [pool[i] for i in idx.tolist()]


def choose_steps(sde_steps: torch.Tensor, fraction: float, generator: torch.Generator) -> list[int]:
    candidates = torch.nonzero(sde_steps).flatten()
    k = max(1, math.ceil(fraction * len(candidates)))
    perm = torch.randperm(len(candidates), generator=generator)[:k]
    return sorted(candidates[perm].tolist())


def compute_advantages(
    scores: dict[str, torch.Tensor], total: torch.Tensor, groups: torch.Tensor, weights: dict[str, float], cfg
) -> torch.Tensor:
    kw = {"eps": cfg.train.adv_eps, "clip": cfg.train.adv_clip, "global_std": cfg.train.global_std}
    if cfg.rewards.per_reward_advantages and len(weights) > 1:
        per = {k: group_advantages(scores[k], groups, **kw) for k in weights}
        return mix_advantages(per, weights)
    return group_advantages(total, groups, **kw)


@torch.no_grad()
def guard_eval(
    adapter: VideoModelAdapter, cfg: GRPOConfig, metric, extra, size: tuple[int, int, int], out: Path | None
) -> dict[str, float]:
    """ODE samples of the guard prompts → the gold metric (and the extra rewards), optionally a contact sheet."""
    from vidpost.models.sampling import sample

    prompts = load_prompt_pool(cfg.guard.prompts, cfg.guard.max_prompts)[: cfg.guard.max_prompts]
    was = adapter.transformer.training
    adapter.transformer.eval()
    videos = []
    for i in range(0, len(prompts), 8):
        videos.append(
            sample(
                adapter,
                prompts[i : i + 8],
                num_frames=size[0],
                height=size[1],
                width=size[2],
                num_inference_steps=cfg.guard.steps,
                guidance_scale=cfg.guard.guidance_scale,
                shift=cfg.rollout.shift if cfg.rollout.shift is not None else adapter.default_shift,
                seed=cfg.guard.seed + i,
            ).cpu()
        )
    adapter.transformer.train(was)
    v = torch.cat(videos)
    gold = metric(v, prompts)
    result = {"gold": float(gold.score.mean())}
    for k, val in gold.components.items():
        result[f"gold/{k}"] = float(val.mean())
    if extra is not None:
        ex = extra(v, prompts)
        for k, val in ex.components.items():
            if "/" not in k:
                result[f"extra/{k}"] = float(val.mean())
    if out is not None:
        from vidpost.media.video_io import contact_sheet

        out.mkdir(parents=True, exist_ok=True)
        contact_sheet(list(v[:16]), out / "contact_sheet.png", labels=prompts[:16])
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _load_lora_init(adapter: VideoModelAdapter, folder: str) -> None:
    """Continue from an existing diffusers LoRA: its weights go into the freshly added adapter."""
    from safetensors.torch import load_file

    f = Path(folder) / "pytorch_lora_weights.safetensors"
    if not f.exists():
        raise ValueError(f"model.lora_init: {f} does not exist")
    state = load_file(str(f))
    params = dict(adapter.transformer.named_parameters())
    loaded = 0
    for key, value in state.items():
        name = key.removeprefix("transformer.")
        name = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        if name not in params:
            raise ValueError(f"model.lora_init: {key} has no matching LoRA parameter (rank/targets differ?)")
        with torch.no_grad():
            params[name].copy_(value.to(params[name].dtype))
        loaded += 1
    print(f"lora_init: loaded {loaded} tensors from {f}", file=sys.stderr)


def load_policy(
    cfg: GRPOConfig, device: torch.device | str
) -> tuple[VideoModelAdapter, tuple[int, int, int], float, torch.nn.Module | None]:
    """The model to align, ready to train: (adapter with its LoRA or unfrozen transformer, trainable weights in
    float32; the rollout size (frames, height, width); the sampling shift; the frozen reference transformer for the
    KL of a full fine-tune, else None)."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model.dtype]
    model_dir = resolve_model_path(cfg.model.path)
    adapter = load(model_dir, dtype=dtype, device=device)
    gen = read_vidpost_config(model_dir).get("generation", {})
    size = (
        cfg.rollout.num_frames or gen.get("num_frames", 81),
        cfg.rollout.height or gen.get("height", 480),
        cfg.rollout.width or gen.get("width", 832),
    )
    adapter.validate_size(*size)
    shift = cfg.rollout.shift if cfg.rollout.shift is not None else adapter.default_shift
    transformer = adapter.transformer
    reference = None
    if cfg.lora.enabled:
        add_lora(adapter, cfg.lora)
        if cfg.model.lora_init:
            _load_lora_init(adapter, cfg.model.lora_init)
    else:
        if cfg.train.kl_beta > 0:
            import copy

            reference = copy.deepcopy(transformer).requires_grad_(False).eval()
        transformer.requires_grad_(True)
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if cfg.model.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return adapter, size, shift, reference


# ---- the loop -----------------------------------------------------------------------------------------------------


def train(cfg: GRPOConfig, resume: str | None = None) -> dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from vidpost.rewards.base import build_rewards

    out_dir = Path(cfg.output_dir)
    log_with = [x for x, on in (("tensorboard", cfg.log.tensorboard), ("wandb", cfg.log.wandb)) if on]
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.train.mixed_precision,
        log_with=log_with or None,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(cfg.train.seed)
    adapter, size, shift, reference = load_policy(cfg, accelerator.device)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    transformer = adapter.transformer
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.optim, cfg.train.max_steps * max(1, cfg.train.updates_per_iteration))
    )
    model, optimizer = accelerator.prepare(transformer, optimizer)
    ema = EMA(transformer, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None

    if cfg.rewards.server:
        from vidpost.rewards.server import RewardServer

        rewards = RewardServer(cfg.rewards.spec, workers=cfg.rewards.workers, devices=cfg.rewards.devices)
    else:
        rewards = build_rewards(cfg.rewards.spec)
    weights = rewards.weights
    metric = build_rewards(cfg.guard.metric) if cfg.guard.every else None
    extra = build_rewards(cfg.guard.extra) if cfg.guard.every and cfg.guard.extra else None
    unwatched = sorted(set(cfg.guard.watch) - set(cfg.guard.extra or {}))
    if unwatched:
        raise ValueError(f"guard.watch: {unwatched} not in guard.extra (known: {sorted(cfg.guard.extra or {})})")
    overlap = set(cfg.guard.metric) & set(cfg.rewards.spec)
    if metric is not None and overlap:
        print(f"warning: guard metric {sorted(overlap)} is also a training reward", file=sys.stderr)
    pool = load_prompt_pool(cfg.rollout.prompts, cfg.rollout.pool_size)

    ckpt_root = out_dir / "checkpoints"
    step = 0
    state_extra: dict[str, Any] = {"best": None, "guard_history": []}
    if resume:
        path = latest_checkpoint(ckpt_root) if resume == "latest" else Path(resume)
        if path is None:
            print(f"--resume latest: no checkpoint in {ckpt_root}, starting from scratch", file=sys.stderr)
        else:
            unwrapped = accelerator.unwrap_model(model)
            step = load_checkpoint(path, unwrapped, optimizer, scheduler, NoDataPosition(), ema)
            saved = json.loads((path / "state.json").read_text())
            state_extra = {"best": saved.get("best"), "guard_history": saved.get("guard_history", [])}
            print(f"resumed from {path} at iteration {step}", file=sys.stderr)
    if log_with:
        accelerator.init_trackers("grpo", config={k: str(v) for k, v in to_dict(cfg).items()})

    history: list[dict[str, float]] = []
    bar = tqdm(total=cfg.train.max_steps, initial=step, desc="grpo", disable=not accelerator.is_main_process)
    n_local = cfg.rollout.prompts_per_step
    stopped = None
    last_good = latest_checkpoint(ckpt_root)

    if cfg.guard.every and step == 0 and accelerator.is_main_process:
        g0 = guard_eval(adapter, cfg, metric, extra, size, out_dir / "guard" / "step_0000000")
        state_extra["guard_history"].append({"step": 0, **g0})
        state_extra["best"] = {"step": 0, "gold": g0["gold"]}
        export(adapter, cfg, out_dir / "best")
        accelerator.log({f"guard/{k}": v for k, v in g0.items()}, step=0)
    while step < cfg.train.max_steps:
        t0 = time.perf_counter()
        prompts_all = choose_prompts(pool, n_local * world, cfg.train.seed, step)
        prompts = prompts_all[rank * n_local : (rank + 1) * n_local]
        model.eval()
        with accelerator.autocast():
            ro = policy_rollout(adapter, cfg, prompts, size, shift, step, rank * n_local, model=model)
        t_sample = time.perf_counter()
        rout = rewards(ro.videos.cpu(), ro.prompts)
        t_reward = time.perf_counter()
        # Gather every process's rewards so groups (and the global std) see the whole batch.
        names = list(weights)
        local = torch.stack([rout.score] + [rout.components[k] for k in names], 1).to(accelerator.device)
        gathered = accelerator.gather(local).cpu()
        if not torch.isfinite(gathered).all():
            bad = [k for j, k in enumerate(["total", *names]) if not torch.isfinite(gathered[:, j]).all()]
            where = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was saved yet"
            raise NonFiniteLoss(f"rewards {bad} returned non-finite values at iteration {step}; stopping ({where})")
        groups = torch.arange(n_local * world).repeat_interleave(cfg.rollout.group_size)
        scores = {k: gathered[:, 1 + j] for j, k in enumerate(names)}
        adv_all = compute_advantages(scores, gathered[:, 0], groups, weights, cfg)
        n_mine = n_local * cfg.rollout.group_size
        adv = adv_all[rank * n_mine : (rank + 1) * n_mine]

        model.train()
        trained = choose_steps(
            ro.sde_steps, cfg.train.timestep_fraction, iteration_generator(cfg.train.seed, step, 0, 2)
        )
        micro = [
            torch.arange(i, min(i + cfg.train.micro_batch, n_mine)) for i in range(0, n_mine, cfg.train.micro_batch)
        ]
        updates = max(1, min(cfg.train.updates_per_iteration, len(micro)))
        chunks = [micro[u * len(micro) // updates : (u + 1) * len(micro) // updates] for u in range(updates)]
        loss_total, kl_total, grad_norms = 0.0, 0.0, []
        ratios, lp_new_all, lp_old_all = [], [], []
        for chunk in chunks:
            denom = len(chunk) * len(trained)
            chunk_loss = 0.0
            for j, idx in enumerate(chunk):
                mb: Rollout = ro.select(idx)
                a = adv[idx].to(accelerator.device)
                for k, i in enumerate(trained):
                    last = j == len(chunk) - 1 and k == len(trained) - 1
                    ctx = accelerator.no_sync(model) if (world > 1 and not last) else contextlib.nullcontext()
                    with ctx, accelerator.autocast():
                        logp, mean, std = step_log_prob(adapter, mb, i, model=model, **policy_kwargs(cfg))
                        old = mb.log_probs[:, i].to(logp.device)
                        loss, ratio = clipped_policy_loss(logp, old, a, cfg.train.clip_range)
                        if cfg.train.kl_beta > 0:
                            kl = _reference_kl(adapter, mb, i, mean, std, model, reference, cfg)
                            loss = loss + cfg.train.kl_beta * kl.mean()
                            kl_total += float(kl.mean()) / (denom * updates)
                        accelerator.backward(loss / denom)
                    chunk_loss += float(loss.detach()) / denom
                    ratios.append(ratio.detach().cpu())
                    lp_new_all.append(logp.detach().cpu())
                    lp_old_all.append(old.detach().cpu())
            if not math.isfinite(chunk_loss):
                where = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was saved yet"
                raise NonFiniteLoss(f"GRPO loss became {chunk_loss} at iteration {step}; stopping ({where})")
            loss_total += chunk_loss / updates
            if cfg.optim.max_grad_norm:
                grad_norms.append(float(accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm)))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
        grad_norm = sum(grad_norms) / len(grad_norms) if grad_norms else None
        step += 1
        t_update = time.perf_counter()

        r_all = torch.cat(ratios)
        stats = ratio_stats(r_all, torch.cat(lp_new_all), torch.cat(lp_old_all), cfg.train.clip_range)
        rec: dict[str, float] = {
            "loss": loss_total,
            "reward": float(gathered[:, 0].mean()),
            "reward_std": float(gathered[:, 0].std()),
            "zero_std_groups": zero_std_fraction(gathered[:, 0], groups),
            "adv_abs": float(adv_all.abs().mean()),
            "kl": kl_total,
            "lr": scheduler.get_last_lr()[0],
            "time_sampling": t_sample - t0,
            "time_reward": t_reward - t_sample,
            "time_update": t_update - t_reward,
            **stats,
        }
        for k in names:
            rec[f"reward/{k}"] = float(scores[k].mean())
            rec[f"reward/{k}_std"] = float(scores[k].std())
        for k, v in rout.components.items():
            if "/" in k:
                rec[f"reward/{k}"] = float(v.mean())
        if grad_norm is not None:
            rec["grad_norm"] = float(grad_norm)
        history.append({"step": step, **rec})
        bar.update(1)
        bar.set_postfix(reward=f"{rec['reward']:.3f}", ratio=f"{stats['ratio_mean']:.4f}")
        if step % cfg.log.every == 0 or step == cfg.train.max_steps:
            accelerator.log({f"train/{k}": v for k, v in rec.items()}, step=step)

        if cfg.guard.every and step % cfg.guard.every == 0 and accelerator.is_main_process:
            g = guard_eval(adapter, cfg, metric, extra, size, out_dir / "guard" / f"step_{step:07d}")
            state_extra["guard_history"].append({"step": step, **g})
            accelerator.log({f"guard/{k}": v for k, v in g.items()}, step=step)
            best = state_extra["best"]
            if best is None or g["gold"] > best["gold"]:
                state_extra["best"] = {"step": step, "gold": g["gold"]}
                export(adapter, cfg, out_dir / "best")
            elif g["gold"] < best["gold"] - cfg.guard.margin:
                stopped = (
                    f"guard: {g['gold']:.3f} at iteration {step} fell more than {cfg.guard.margin} below the best "
                    f"{best['gold']:.3f} (iteration {best['step']}); best weights kept in {out_dir / 'best'}"
                )
            stopped = stopped or watch_tripped(state_extra["guard_history"], cfg.guard.watch, out_dir / "best")
        if accelerator.is_main_process and cfg.checkpoint.every and (step % cfg.checkpoint.every == 0 or stopped):
            last_good = save_checkpoint(
                ckpt_root,
                step,
                accelerator.unwrap_model(model),
                optimizer,
                scheduler,
                NoDataPosition(),
                ema,
                cfg.checkpoint.keep_last,
                {"config_hash": config_hash(cfg), **state_extra},
            )
        if world > 1:
            flag = torch.tensor([1.0 if stopped else 0.0], device=accelerator.device)
            if accelerator.reduce(flag, reduction="sum").item() > 0 and stopped is None:
                stopped = "guard tripped on the main process"
        if stopped:
            break
    bar.close()
    accelerator.wait_for_everyone()
    result: dict[str, Any] = {"steps": step, "history": history, "guard": state_extra["guard_history"]}
    if stopped:
        result["stopped"] = stopped
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(accelerator.unwrap_model(model))
        result["final"] = str(export(adapter, cfg, out_dir / "final"))
        if (out_dir / "best").exists():
            result["best"] = str(out_dir / "best")
            result["best_step"] = (state_extra["best"] or {}).get("step")
        (out_dir / "history.json").write_text(json.dumps(history) + "\n")
        (out_dir / "guard.json").write_text(json.dumps(state_extra["guard_history"], indent=1) + "\n")
        _plot(history, state_extra["guard_history"], out_dir / "curves.png")
    if rewards is not None and hasattr(rewards, "close"):
        rewards.close()
    accelerator.end_training()
    return result


def watch_tripped(history: list[dict[str, float]], watch: dict[str, float], best_dir: Path) -> str | None:
    """The stop message when the newest guard entry has a watched extra metric more than its margin below the best
    value of that metric over the earlier entries; None otherwise."""
    *before, now = history
    for name, margin in watch.items():
        key = f"extra/{name}"
        top = max(before, key=lambda h: h[key], default=None)
        if top is not None and now[key] < top[key] - margin:
            return (
                f"guard: {name} {now[key]:.3f} at iteration {now['step']} fell more than {margin} below its best "
                f"{top[key]:.3f} (iteration {top['step']}); best weights (by the gold metric) kept in {best_dir}"
            )
    return None


def policy_rollout(
    adapter: VideoModelAdapter,
    cfg: GRPOConfig,
    prompts: list[str],
    size: tuple[int, int, int],
    shift: float,
    step: int,
    first_index: int = 0,
    model: torch.nn.Module | None = None,
) -> Rollout:
    """Iteration `step`'s rollout of `prompts` (global indices from `first_index`) as the config sets it up."""
    return rollout(
        adapter,
        prompts,
        group_size=cfg.rollout.group_size,
        num_frames=size[0],
        height=size[1],
        width=size[2],
        num_steps=cfg.rollout.steps,
        shift=shift,
        negative_prompt=cfg.rollout.negative_prompt,
        sde_window=tuple(cfg.rollout.sde_window) if cfg.rollout.sde_window else None,
        shared_noise=cfg.rollout.shared_noise,
        generators=[iteration_generator(cfg.train.seed, step, first_index + j, 1) for j in range(len(prompts))],
        model=model,
        chunk_size=cfg.train.micro_batch,
        **policy_kwargs(cfg),
    )


def policy_kwargs(cfg: GRPOConfig) -> dict[str, Any]:
    """How the policy steps: CFG scale, SDE kind and noise level (the same in the rollout and every recomputation)."""
    return {
        "guidance_scale": cfg.rollout.guidance_scale,
        "kind": cfg.rollout.sde,
        "noise_level": cfg.rollout.noise_level,
    }


def _reference_kl(adapter, mb, i, mean, std, model, reference, cfg) -> torch.Tensor:
    kw = policy_kwargs(cfg)
    with torch.no_grad():
        if reference is not None:
            _, mean_ref, _ = step_log_prob(adapter, mb, i, model=reference, **kw)
        else:
            unwrapped = model.module if hasattr(model, "module") else model
            unwrapped.disable_adapters()
            try:
                _, mean_ref, _ = step_log_prob(adapter, mb, i, model=model, **kw)
            finally:
                unwrapped.enable_adapters()
    return gaussian_kl(mean, mean_ref, std)


def _plot(history: list[dict[str, float]], guard: list[dict[str, float]], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [h["step"] for h in history]
    r = np.array([h["reward"] for h in history])
    axes[0].plot(steps, r, alpha=0.35, label="reward (per iteration)")
    if len(r) >= 5:
        k = max(2, len(r) // 20)
        smooth = np.convolve(r, np.ones(k) / k, mode="valid")
        axes[0].plot(steps[k - 1 :], smooth, label=f"reward ({k}-iteration mean)")
    axes[0].set_xlabel("iteration")
    axes[0].set_title("training reward")
    axes[0].legend()
    if guard:
        gs = [g["step"] for g in guard]
        axes[1].plot(gs, [g["gold"] for g in guard], "o-", label="guard: gold metric")
        for key in sorted({k for g in guard for k in g if k.startswith("extra/")}):
            axes[1].plot(gs, [g.get(key, np.nan) for g in guard], "s--", label=key)
        axes[1].set_xlabel("iteration")
        axes[1].set_title("held-out guard")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- command line -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidpost grpo", description="GRPO for video flow models (LoRA or full).")
    add_stage_arguments(p, "configs/<model>/grpo.yaml")
    return p


def main(argv: list[str] | None = None) -> int:
    code, result = run_stage(GRPOConfig, train, build_parser().parse_args(argv))
    if result is None:
        return code
    if "stopped" in result:
        print(f"stopped: {result['stopped']}", file=sys.stderr)
        return 4
    if "final" in result:
        print(f"done: {result['steps']} iterations; weights in {result['final']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
