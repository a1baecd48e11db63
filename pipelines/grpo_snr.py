"""`vidpost rl snr`: does an RL batch carry signal? Agreement between the gradients of independent rollouts.

    vidpost rl snr --config configs/shapes/grpo.yaml [--rollouts 8] [--control brightness] [--out DIR] [key=value ...]
    vidpost rl snr --config configs/shapes/rl-nft.yaml algorithm=awm        (any `vidpost rl` algorithm)

With the run's own config (model, LoRA, rollout, rewards, advantages), the command takes the prompts of the first
iteration and rolls them out `--rollouts` times with independent noise (rollout r draws the noise of training
iteration r, so rollout 0 is exactly the first iteration's). Each rollout gives one policy gradient
estimate, exactly the one a training iteration would take (at the initial weights, ratio 1, every SDE step of the
rollout trained, all micro-batches accumulated), and a control estimate from the same rollout with its advantages
permuted within each group (expected gradient 0). `vidpost.rl.diagnostics.gradient_agreement` turns each set into
ρ, the share of one estimate's squared norm that is signal, and k₁ = (1 − ρ)/ρ, how many such batches must be
averaged for a gradient whose signal equals its noise. A ρ no larger than the control's spread means the batch
carries no measurable signal: raise the batch (prompts × group size), or sharpen the reward, before spending hours
of training on it. Printed, and written to `<out>/grpo_snr.json`.

The estimate is the gradient of the config's `algorithm` (`vidpost rl`: grpo, nft, awm, rsft or draft) at the
initial weights, over every sample of the rollout: GRPO's over every SDE step; the forward-process methods' over
each sample's noise levels (the old policy equal to the current one); draft's through its last steps. Two more
readings:
- `--control REWARD` repeats the measurement with `rewards.spec` = {REWARD: 1} (e.g. `brightness`, which any
  working estimator must find): a method whose ρ stays in the control's spread on it is broken, not starved;
- when every reward is differentiable and the rollout's last `draft.steps` steps are ODE steps (the
  forward-process rollouts; GRPO with an `sde_window` that ends early), each rollout's estimate is also compared
  with the pathwise (reward-backprop) gradient of the same rollout: the mean cosine, beside the same for the
  permuted control, whose spread is the reading's resolution.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vidpost.config import ArgumentParser, load_config
from vidpost.evaluation.prompts import load_prompt_pool
from vidpost.outputs import write_text
from vidpost.pipelines.rl import compute_advantages, load_policy
from vidpost.rl.algorithms import algorithm_module
from vidpost.rl.algorithms.draft import differentiable_reward, draft_update
from vidpost.rl.algorithms.forward import ForwardBatch, ForwardStats, OldPolicy, forward_update, training_sigmas
from vidpost.rl.algorithms.grpo import UpdateStats, grpo_update
from vidpost.rl.config import RLConfig, validate
from vidpost.rl.diagnostics import gradient_agreement, permute_within_groups
from vidpost.rl.iteration import choose_prompts, micro_batches
from vidpost.rl.rollout import Rollout, policy_rollout, step_kwargs


def _flat(params: list[torch.nn.Parameter]) -> torch.Tensor:
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float().cpu() for p in params])
    for p in params:
        p.grad = None
    return flat


def policy_gradient(
    adapter, ro: Rollout, adv: torch.Tensor, params: list[torch.nn.Parameter], cfg: RLConfig, *, index: int = 0,
    reward_fn=None,
) -> torch.Tensor:  # fmt: skip
    """The flattened gradient of one iteration's loss of `cfg.algorithm` at the current weights over every sample of
    `ro` (GRPO: every SDE step, ratio 1; nft / awm: the old policy equal to the current one; rsft: the kept samples;
    draft: `reward_fn` through the last steps). `index` seeds the forward-process methods' noise levels."""
    for p in params:
        p.grad = None
    micro = micro_batches(len(adv), cfg.train.micro_batch)
    model = adapter.transformer
    if cfg.algorithm == "grpo":
        steps = torch.nonzero(ro.sde_steps).flatten().tolist()
        kw = {"clip_range": cfg.train.clip_range, "step_kwargs": step_kwargs(cfg.rollout)}
        grpo_update(adapter, ro, adv, steps, micro, UpdateStats(), **kw)
    elif cfg.algorithm == "draft":
        kw = {"k_steps": cfg.draft.steps, "reward_fn": reward_fn, "guidance_scale": cfg.rollout.guidance_scale}
        draft_update(adapter, ro, micro, ForwardStats(), model=model, **kw)
    else:
        f, algorithm = cfg.forward, algorithm_module(cfg.algorithm)
        sigmas = training_sigmas(ro.sigmas, len(adv), f.timestep_fraction, cfg.train.seed, index)
        batch = ForwardBatch(
            ro.latents[:, -1], ro.cond, ro.uncond if f.guided else None, sigmas, torch.arange(len(adv))
        )
        if cfg.algorithm == "rsft":
            keep = algorithm.select(cfg, adv, ro.groups)
            micro = [keep[m] for m in micro_batches(len(keep), cfg.train.micro_batch)]
        kw = {"loss": algorithm.loss(cfg), "seed": cfg.train.seed, "step": index, "model": model}
        kw |= {"guidance_scale": cfg.rollout.guidance_scale if f.guided else 1.0, "old": OldPolicy(model)}
        forward_update(adapter, batch, adv, micro, ForwardStats(), **kw)
    return _flat(params)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def measure(
    cfg: RLConfig, rollouts: int, device: str | None = None, *, keep_gradients: bool = False
) -> dict[str, Any]:
    """Run the measurement (see the module doc); `keep_gradients` adds the estimates as `gradients` / `controls`."""
    from vidpost.rewards.base import build_rewards

    if rollouts < 2:
        raise ValueError(f"--rollouts must be at least 2, got {rollouts}")
    validate(cfg)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.train.seed)
    policy = load_policy(cfg, device)
    adapter, size, shift = policy.adapter, policy.size, policy.shift
    params = [p for p in adapter.transformer.parameters() if p.requires_grad]
    rewards = build_rewards(cfg.rewards.spec)
    weights = rewards.weights
    differentiable = all(getattr(r, "differentiable", False) for r in rewards.rewards.values())
    reward_fn = differentiable_reward(rewards) if differentiable else None
    if cfg.algorithm == "draft" and reward_fn is None:
        differentiable_reward(rewards)  # raises the one-line error naming the rewards
    n_prompts, group = cfg.rollout.prompts_per_step, cfg.rollout.group_size
    prompts = choose_prompts(
        load_prompt_pool(cfg.rollout.prompts, cfg.rollout.pool_size), n_prompts, cfg.train.seed, 0
    )
    groups = torch.arange(n_prompts).repeat_interleave(group)
    real, null, reward_means, path_cos, null_path_cos = [], [], [], [], []
    t0 = time.perf_counter()
    for r in tqdm(range(rollouts), desc="grpo-snr"):
        adapter.transformer.eval()
        with torch.no_grad():
            ro = policy_rollout(adapter, cfg, prompts, size, shift, r)
        out = rewards(ro.videos.cpu(), ro.prompts)
        scores = {k: out.components[k].float() for k in weights}
        adv = compute_advantages(scores, out.score.float(), groups, weights, cfg).to(device)
        adapter.transformer.train()
        kw = {"index": r, "reward_fn": reward_fn}
        real.append(policy_gradient(adapter, ro, adv, params, cfg, **kw))
        shuffled = permute_within_groups(adv.cpu(), groups, torch.Generator().manual_seed(r)).to(device)
        null.append(policy_gradient(adapter, ro, shuffled, params, cfg, **kw))
        k = cfg.draft.steps
        if reward_fn is not None and cfg.algorithm != "draft" and not ro.sde_steps[ro.num_steps - k :].any():
            path = policy_gradient(adapter, ro, adv, params, _as_draft(cfg), **kw)
            path_cos.append(_cosine(real[-1], path))
            null_path_cos.append(_cosine(null[-1], path))
        reward_means.append(float(out.score.mean()))
    result = {
        "model": cfg.model.path,
        "algorithm": cfg.algorithm,
        "rewards": sorted(weights),
        "prompts": prompts,
        "videos_per_rollout": n_prompts * group,
        "rollouts": rollouts,
        "trainable_parameters": sum(p.numel() for p in params),
        "reward_mean": sum(reward_means) / len(reward_means),
        "seconds": time.perf_counter() - t0,
        "real": gradient_agreement(real),
        "control": gradient_agreement(null),
    }
    if path_cos:
        t = torch.tensor(path_cos, dtype=torch.float64)
        c = torch.tensor(null_path_cos, dtype=torch.float64)
        result["pathwise"] = {"cos_mean": float(t.mean()), "control_cos_mean": float(c.mean()),
                              "control_cos_std": float(c.std()) if len(c) > 1 else 0.0, "draft_steps": k}  # fmt: skip
    if keep_gradients:
        result["gradients"], result["controls"] = real, null
    return result


def _as_draft(cfg: RLConfig) -> RLConfig:
    from dataclasses import replace

    return replace(cfg, algorithm="draft")


def report(result: dict[str, Any]) -> str:
    real, ctl = result["real"], result["control"]
    v = result["videos_per_rollout"]
    lines = [
        f"{result['algorithm']} on {', '.join(result['rewards'])}: {result['rollouts']} rollouts of {v} videos "
        f"({len(result['prompts'])} prompts), {result['trainable_parameters']:,} trainable parameters, "
        f"{result['seconds']:.0f} s",
        f"gradient  rho {real['rho']:+.4f}  cos {real['cos_mean']:+.4f} ± {real['cos_std']:.4f}",
        f"control (permuted advantages)  rho {ctl['rho']:+.4f}  cos {ctl['cos_mean']:+.4f} ± {ctl['cos_std']:.4f}",
    ]
    spread = ctl["cos_std"] / math.sqrt(max(1.0, result["rollouts"] / 2))
    if real["rho"] <= max(0.0, ctl["rho"]) + 2 * spread:
        lines.append(
            f"no measurable signal: rho is within the control's spread (±{2 * spread:.4f}); one {v}-video batch "
            f"is mostly noise"
        )
    else:
        k = real["estimates_for_snr1"]
        lines.append(f"signal share {real['rho']:.3f}: about {k:.1f} batches ({k * v:.0f} videos) for SNR 1")
    if "pathwise" in result:
        pw = result["pathwise"]
        lines.append(
            f"cosine with the pathwise gradient (reward backprop through the last {pw['draft_steps']} steps): "
            f"{pw['cos_mean']:+.4f}; permuted control {pw['control_cos_mean']:+.4f} ± {pw['control_cos_std']:.4f}"
        )
    return "\n".join(lines)


def _finite(result: dict[str, Any]) -> dict[str, Any]:
    return {
        k: ({n: (x if math.isfinite(x) else None) for n, x in v.items()} if k in ("real", "control") else v)
        for k, v in result.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost rl snr", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="the RL config (configs/<model>/grpo.yaml, rl-*.yaml)")
    p.add_argument("--rollouts", type=int, default=8)
    p.add_argument("--control", help="a positive-control reward (e.g. brightness) measured the same way afterwards")
    p.add_argument("--out", type=Path, default=None, help="folder for grpo_snr.json")
    p.add_argument("--device", default=None)
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the config")
    args = p.parse_args(argv)
    try:
        cfg = load_config(RLConfig, args.config, args.overrides)
        result = measure(cfg, args.rollouts, args.device)
        print(report(result))
        if args.control:
            ctl_cfg = load_config(RLConfig, args.config, [*args.overrides, f"rewards.spec={{{args.control}: 1.0}}"])
            result["positive_control"] = _finite(measure(ctl_cfg, args.rollouts, args.device))
            print(f"positive control ({args.control}):")
            print(report(result["positive_control"]))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text(args.out / "grpo_snr.json", json.dumps(_finite(result), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
