"""Reward backprop through the last K sampling steps: DRaFT-K (Clark et al., "Directly Fine-Tuning Diffusion Models on
Differentiable Rewards", arXiv 2309.17400; ReFL, Xu et al. 2023, is the one-step relative).

The rollout is the ODE sampler without gradients; it stores every state x_0..x_S. For each micro-batch the update
restarts from the stored x_{S−K} and takes the last K steps again with gradients — the same deterministic steps, so
the same x_S — then decodes and scores:

    x_{i+1} = x_i + (σ_{i+1} − σ_i)·v_θ(x_i, σ_i)        i = S−K … S−1   (the CFG-guided velocity, as sampled)
    loss    = −mean_b Σ_k w_k·r_k(decode(x_S)_b)                        (every reward differentiable)
            + β_KL·mean over the K steps of mean‖v_θ − v_ref‖²          (β_KL > 0; v_ref: the LoRA disabled)
    backward(loss / micro-batches)

so the gradient is the pathwise (reparameterised) gradient of the reward through the last K steps, the VAE decoder
and the reward. Departures from DRaFT: the stop-gradient to earlier steps is the rollout itself (no truncated
backprop through a longer chain); neither DRaFT-LV's variance reduction nor ReFL's random stop step is implemented.
With `gradient_checkpointing` on the policy the K steps store only block inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from vidpost.models.base import VideoModelAdapter
from vidpost.models.sampling import ode_step

from .forward import velocity_kl
from .forward_update import ForwardStats, lora_disabled
from .rollout import Rollout

__all__ = ["differentiable_reward", "draft_update"]


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
    reference: torch.nn.Module | None = None,
    accelerator: Any | None = None,
) -> float:
    """Accumulate one optimizer step's gradient over the micro-batches `micro` (sample indices into `ro`; module doc);
    → the step's loss. `ro` must hold the ODE trajectory (`rollout.sde: ode`)."""
    backward = accelerator.backward if accelerator is not None else torch.Tensor.backward
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    sync_every = accelerator is None or accelerator.num_processes == 1
    n_steps = ro.num_steps
    if not 1 <= k_steps <= n_steps:
        raise ValueError(f"forward.draft_steps must be in 1..{n_steps} (the rollout's steps), got {k_steps}")
    loss_sum = 0.0
    for j, idx in enumerate(micro):
        mb = ro.select(idx)
        last = j == len(micro) - 1
        ctx = accelerator.no_sync(model) if not (sync_every or last) else contextlib.nullcontext()
        with ctx, autocast():
            x = mb.latents[:, n_steps - k_steps].to(adapter.device)
            kl = torch.zeros((), device=x.device)
            for i in range(n_steps - k_steps, n_steps):
                s, s_next = mb.sigmas[i].item(), mb.sigmas[i + 1].item()
                v = adapter.predict_velocity(x, s, mb.cond, mb.uncond, guidance_scale, model=model).float()
                if kl_beta > 0:
                    with torch.no_grad():
                        if reference is not None:
                            v_ref = adapter.predict_velocity(x, s, mb.cond, mb.uncond, guidance_scale, model=reference)
                        else:
                            with lora_disabled(model):
                                v_ref = adapter.predict_velocity(x, s, mb.cond, mb.uncond, guidance_scale, model=model)
                    kl = kl + velocity_kl(v, v_ref) / k_steps
                x = ode_step(x, v, s, s_next)
            r = reward_fn(adapter.decode(x), mb.prompts)
            loss = -r.float().mean() + kl_beta * kl
            backward(loss / len(micro))
        stats.add("reward_differentiable", r)
        if kl_beta > 0:
            stats.add("kl", kl)
        loss_sum += float(loss.detach()) / len(micro)
        stats.terms += 1
    return loss_sum
