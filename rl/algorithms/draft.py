"""`algorithm: draft` — reward backprop through the last K sampling steps: DRaFT-K (Clark et al., "Directly
Fine-Tuning Diffusion Models on Differentiable Rewards", arXiv 2309.17400; ReFL, Xu et al. 2023, is the one-step
relative).

The rollout is the ODE sampler without gradients; it stores every state x_0..x_S. For each micro-batch (a term of
`vidpost.rl.scaffold.accumulate`) the update restarts from the stored x_{S−K} and takes the last K steps again with
gradients — the same deterministic steps, so the same x_S — then decodes and scores:

    x_{i+1} = x_i + (σ_{i+1} − σ_i)·v_θ(x_i, σ_i)        i = S−K … S−1   (the CFG-guided velocity, as sampled)
    loss    = −mean_b Σ_k w_k·r_k(decode(x_S)_b)                        (every reward differentiable)
            + β_KL·mean over the K steps of mean‖v_θ − v_ref‖²          (β_KL > 0; v_ref: the LoRA disabled)
    backward(loss / micro-batches)

so the gradient is the pathwise (reparameterised) gradient of the reward through the last K steps, the VAE decoder
and the reward; the advantages are only logged. Departures from DRaFT: the stop-gradient to earlier steps is the
rollout itself (no truncated backprop through a longer chain); neither DRaFT-LV's variance reduction nor ReFL's
random stop step is implemented. With `gradient_checkpointing` on the policy the K steps store only block inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vidpost.config import PositiveInt
from vidpost.models.base import VideoModelAdapter
from vidpost.models.sampling import ode_step
from vidpost.rl.algorithms.forward import ForwardStats
from vidpost.rl.forward import velocity_kl
from vidpost.rl.iteration import micro_batches, split_updates
from vidpost.rl.rollout import Rollout
from vidpost.rl.scaffold import accumulate, optimizer_steps, reference

__all__ = ["DraftSection", "differentiable_reward", "draft_update", "update"]

OLD_POLICY = False


@dataclass
class DraftSection:
    """`draft:` — reward backprop's settings."""

    steps: PositiveInt = 1
    """K: backpropagate the differentiable reward through the last K sampling steps (≤ rollout.steps)"""


def differentiable_reward(rewards: Any) -> Callable[[torch.Tensor, list[str]], torch.Tensor]:
    """(videos, prompts) → [B] Σ w_k·r_k with the graph kept, from a `WeightedReward` whose every reward is
    `differentiable`; a one-line error names the ones that are not (or a reward server, which returns no graph)."""
    parts = getattr(rewards, "rewards", None)
    if parts is None:
        raise ValueError("algorithm draft needs its rewards in this process (rewards.server must be empty)")
    bad = sorted(name for name, r in parts.items() if not getattr(r, "differentiable", False))
    if bad:
        raise ValueError(f"algorithm draft needs differentiable rewards; not differentiable: {', '.join(bad)}")

    def score(videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        total = 0.0
        for name, reward in parts.items():
            total = total + rewards.weights[name] * reward._score(videos.to(reward.device), prompts).score
        return total

    return score


def draft_update(
    adapter: VideoModelAdapter,
    ro: Rollout,
    micro: list[torch.Tensor],
    stats: ForwardStats,
    *,
    k_steps: int,
    reward_fn: Callable[[torch.Tensor, list[str]], torch.Tensor],
    guidance_scale: float = 1.0,
    kl_beta: float = 0.0,
    model: torch.nn.Module,
    reference_model: torch.nn.Module | None = None,
    accelerator: Any | None = None,
) -> float:
    """Accumulate one optimizer step's gradient over the micro-batches `micro` (sample indices into `ro`; module doc);
    → the step's loss. `ro` must hold the ODE trajectory (`rollout.sde: ode`)."""
    n_steps = ro.num_steps
    if not 1 <= k_steps <= n_steps:
        raise ValueError(f"draft.steps must be in 1..{n_steps} (the rollout's steps), got {k_steps}")

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        mb = ro.select(idx)
        x = mb.latents[:, n_steps - k_steps].to(adapter.device)
        kl = torch.zeros((), device=x.device)
        for i in range(n_steps - k_steps, n_steps):
            s, s_next = mb.sigmas[i].item(), mb.sigmas[i + 1].item()

            def velocity(net: torch.nn.Module, x=x, s=s) -> torch.Tensor:
                return adapter.predict_velocity(x, s, mb.cond, mb.uncond, guidance_scale, model=net)

            v = velocity(model).float()
            if kl_beta > 0:
                kl = kl + velocity_kl(v, reference(model, reference_model, velocity)) / k_steps
            x = ode_step(x, v, s, s_next)
        r = reward_fn(adapter.decode(x), mb.prompts)
        stats.add("reward_differentiable", r)
        if kl_beta > 0:
            stats.add("kl", kl)
        stats.terms += 1
        return -r.float().mean() + kl_beta * kl

    return accumulate(micro, loss_fn, model=model, accelerator=accelerator)


def update(run: Any, ro: Rollout, advantages_N: torch.Tensor) -> ForwardStats:
    """The iteration's update: one optimizer step of `draft_update` per part of the micro-batches."""
    cfg = run.cfg
    run.model.train()
    stats = ForwardStats(trained=len(advantages_N))
    parts = split_updates(micro_batches(len(advantages_N), cfg.train.micro_batch), cfg.train.updates_per_iteration)
    kw = {"k_steps": cfg.draft.steps, "reward_fn": run.reward_fn, "guidance_scale": cfg.rollout.guidance_scale}
    kw |= {"kl_beta": cfg.train.kl_beta, "model": run.model, "reference_model": run.policy.reference}
    kw |= {"accelerator": run.accelerator}
    optimizer_steps(
        run.trainer,
        run.params,
        parts,
        lambda part: draft_update(run.policy.adapter, ro, part, stats, **kw),
        stats,
        "draft",
    )
    return stats
