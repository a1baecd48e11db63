"""`vidpost grpo-snr`: does a GRPO batch carry signal? Agreement between policy gradients of independent rollouts.

    vidpost grpo-snr --config configs/shapes/grpo.yaml [--rollouts 8] [--out DIR] [dotted.key=value ...]

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
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vidpost.config import load_config
from vidpost.pipelines.grpo import GRPOConfig, compute_advantages, load_policy, policy_rollout
from vidpost.rl.diagnostics import gradient_agreement, permute_within_groups
from vidpost.rl.iteration import choose_prompts, micro_batches
from vidpost.rl.prompts import load_prompt_pool
from vidpost.rl.rollout import Rollout, step_kwargs
from vidpost.rl.update import UpdateStats, grpo_update


def policy_gradient(
    adapter, ro: Rollout, adv: torch.Tensor, params: list[torch.nn.Parameter], cfg: GRPOConfig
) -> torch.Tensor:
    """The flattened gradient of one iteration's policy loss (`grpo_update` over every SDE step and every
    micro-batch, at ratio 1)."""
    steps = torch.nonzero(ro.sde_steps).flatten().tolist()
    micro = micro_batches(len(adv), cfg.train.micro_batch)
    for p in params:
        p.grad = None
    grpo_update(
        adapter,
        ro,
        adv,
        steps,
        micro,
        UpdateStats(),
        clip_range=cfg.train.clip_range,
        step_kwargs=step_kwargs(cfg.rollout),
    )
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float().cpu() for p in params])
    for p in params:
        p.grad = None
    return flat


def measure(
    cfg: GRPOConfig, rollouts: int, device: str | None = None, *, keep_gradients: bool = False
) -> dict[str, Any]:
    """Run the measurement (see the module doc); `keep_gradients` adds the estimates as `gradients` / `controls`."""
    from vidpost.rewards.base import build_rewards

    if rollouts < 2:
        raise ValueError(f"--rollouts must be at least 2, got {rollouts}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.train.seed)
    policy = load_policy(cfg, device)
    adapter, size, shift = policy.adapter, policy.size, policy.shift
    params = [p for p in adapter.transformer.parameters() if p.requires_grad]
    rewards = build_rewards(cfg.rewards.spec)
    weights = rewards.weights
    n_prompts, group = cfg.rollout.prompts_per_step, cfg.rollout.group_size
    prompts = choose_prompts(
        load_prompt_pool(cfg.rollout.prompts, cfg.rollout.pool_size), n_prompts, cfg.train.seed, 0
    )
    groups = torch.arange(n_prompts).repeat_interleave(group)
    real, null, reward_means = [], [], []
    t0 = time.perf_counter()
    for r in tqdm(range(rollouts), desc="grpo-snr"):
        adapter.transformer.eval()
        with torch.no_grad():
            ro = policy_rollout(adapter, cfg, prompts, size, shift, r)
        out = rewards(ro.videos.cpu(), ro.prompts)
        scores = {k: out.components[k].float() for k in weights}
        adv = compute_advantages(scores, out.score.float(), groups, weights, cfg).to(device)
        adapter.transformer.train()
        real.append(policy_gradient(adapter, ro, adv, params, cfg))
        shuffled = permute_within_groups(adv.cpu(), groups, torch.Generator().manual_seed(r)).to(device)
        null.append(policy_gradient(adapter, ro, shuffled, params, cfg))
        reward_means.append(float(out.score.mean()))
    result = {
        "model": cfg.model.path,
        "prompts": prompts,
        "videos_per_rollout": n_prompts * group,
        "rollouts": rollouts,
        "trainable_parameters": sum(p.numel() for p in params),
        "reward_mean": sum(reward_means) / len(reward_means),
        "seconds": time.perf_counter() - t0,
        "real": gradient_agreement(real),
        "control": gradient_agreement(null),
    }
    if keep_gradients:
        result["gradients"], result["controls"] = real, null
    return result


def report(result: dict[str, Any]) -> str:
    real, ctl = result["real"], result["control"]
    v = result["videos_per_rollout"]
    lines = [
        f"{result['rollouts']} rollouts of {v} videos ({len(result['prompts'])} prompts), "
        f"{result['trainable_parameters']:,} trainable parameters, {result['seconds']:.0f} s",
        f"policy gradient  rho {real['rho']:+.4f}  cos {real['cos_mean']:+.4f} ± {real['cos_std']:.4f}",
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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vidpost grpo-snr", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="the GRPO config (configs/<model>/grpo.yaml)")
    p.add_argument("--rollouts", type=int, default=8)
    p.add_argument("--out", type=Path, default=None, help="folder for grpo_snr.json")
    p.add_argument("--device", default=None)
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the GRPO config")
    args = p.parse_args(argv)
    try:
        cfg = load_config(GRPOConfig, args.config, args.overrides)
        result = measure(cfg, args.rollouts, args.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(result))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        finite = {
            k: ({n: (x if math.isfinite(x) else None) for n, x in v.items()} if k in ("real", "control") else v)
            for k, v in result.items()
        }
        (args.out / "grpo_snr.json").write_text(json.dumps(finite, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
