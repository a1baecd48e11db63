"""GRPO rollouts: G samples per prompt through an SDE (or SDE window), storing what the update needs.

`rollout(...)` samples, for each prompt, `group_size` trajectories x_0 → x_S over the flow schedule σ_0..σ_S.
Steps inside the SDE window are stochastic (`vidpost.rl.sde.sde_step`) and record the old log-probability of
the transition actually taken; steps outside it are ODE steps (deterministic, log-prob 0, never trained).
Classifier-free guidance, when used, happens inside the step (the policy is the guided velocity), and
`step_log_prob` recomputes a step's log-prob the same way — with gradients — for the update. With
`shared_noise`, all members of a group start from the same initial noise (their differences then come from
the SDE noise alone, as in DanceGRPO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from vidpost.config import NonNegativeFloat, PositiveFloat, PositiveInt
from vidpost.models.base import PromptEmbeds, VideoModelAdapter
from vidpost.models.sampling import flow_sigmas, initial_noise, ode_step
from vidpost.sections import PromptPool, VideoSize
from vidpost.seeding import step_generator

from .sde import sde_step

__all__ = [
    "Rollout",
    "RolloutConfig",
    "iteration_rollout",
    "rollout",
    "sde_window_mask",
    "step_kwargs",
    "step_log_prob",
]


@dataclass
class RolloutConfig(VideoSize, PromptPool):
    prompts_per_step: PositiveInt = 4
    """prompts per process per iteration"""
    group_size: PositiveInt = 8
    """samples per prompt (G)"""
    steps: PositiveInt = 10
    """denoising steps of a rollout"""
    shift: PositiveFloat | None = None
    guidance_scale: NonNegativeFloat = 5.0
    negative_prompt: str = ""
    sde: Literal["dance", "flow", "cps", "ode"] = "dance"
    """"ode": every step deterministic (the forward-process algorithms' rollouts; no log-probs)"""
    noise_level: NonNegativeFloat = 0.3
    """η for "dance" and "cps", a for "flow\""""
    sde_window: list[int] | None = None
    """[start, end): SDE on these steps only, ODE elsewhere (null: all steps)"""
    shared_noise: bool = True
    """one initial noise per group"""


@dataclass
class Rollout:
    prompts: list[str]  # [N]: each prompt repeated group_size times, consecutively
    groups: torch.Tensor  # [N] group id (index of the prompt within the batch)
    latents: torch.Tensor  # [N, S + 1, C, T, H, W] float32, the trajectory (on `store_device`)
    sigmas: torch.Tensor  # [S + 1]
    log_probs: torch.Tensor  # [N, S] old log-probs (0 on ODE steps)
    sde_steps: torch.Tensor  # [S] bool: which steps are stochastic (trainable)
    cond: PromptEmbeds  # [N]
    uncond: PromptEmbeds | None  # [N] when CFG is used
    videos: torch.Tensor | None = None  # [N, C, T, H, W] in [0, 1] when decoded

    @property
    def num_steps(self) -> int:
        return self.sigmas.numel() - 1

    def select(self, index: torch.Tensor) -> Rollout:
        """The sub-rollout of samples `index` (for micro-batching the update)."""
        idx = index.tolist()
        return Rollout(
            prompts=[self.prompts[i] for i in idx],
            groups=self.groups[index],
            latents=self.latents[index],
            sigmas=self.sigmas,
            log_probs=self.log_probs[index],
            sde_steps=self.sde_steps,
            cond=self.cond.index(index),
            uncond=None if self.uncond is None else self.uncond.index(index),
            videos=None if self.videos is None else self.videos[index],
        )


def sde_window_mask(num_steps: int, window: tuple[int, int] | None) -> torch.Tensor:
    """[S] bool: steps start ≤ i < end are stochastic (all when `window` is None; negative ends count back)."""
    mask = torch.zeros(num_steps, dtype=torch.bool)
    if window is None:
        mask[:] = True
        return mask
    start, end = window
    start = start % num_steps if start < 0 else start
    end = end % num_steps if end < 0 else min(end, num_steps)
    if not 0 <= start < end:
        raise ValueError(f"empty SDE window {window} for {num_steps} steps")
    mask[start:end] = True
    return mask


@torch.no_grad()
def rollout(
    adapter: VideoModelAdapter,
    prompts: list[str],
    *,
    group_size: int,
    num_frames: int,
    height: int,
    width: int,
    num_steps: int,
    shift: float,
    guidance_scale: float = 1.0,
    negative_prompt: str = "",
    kind: str = "dance",
    noise_level: float = 0.3,
    sde_window: tuple[int, int] | None = None,
    shared_noise: bool = True,
    generators: list[torch.Generator] | None = None,
    model: torch.nn.Module | None = None,
    decode: bool = True,
    store_device: str | torch.device | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Rollout:
    """Sample `group_size` videos per prompt with SDE steps in `sde_window`; see the module docstring.

    `generators` holds one CPU generator per prompt: all of a group's randomness (initial and SDE noise) comes
    from its own generator, so a group's samples do not depend on which other prompts share the batch (or the
    process) — N processes reproduce one process with the same global batch. `chunk_size` runs the transformer
    on consecutive chunks of that many samples: set to the update's micro-batch, the update recomputes each
    log-prob with bit-identical inputs and batch layout, so the ratio is exactly 1 before the first step."""
    device = adapter.device
    if generators is None:
        generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    if len(generators) != len(prompts):
        raise ValueError(f"{len(generators)} generators for {len(prompts)} prompts")
    n = len(prompts) * group_size
    expanded = [p for p in prompts for _ in range(group_size)]
    groups = torch.arange(len(prompts)).repeat_interleave(group_size)
    cond = adapter.encode_prompt(list(prompts)).repeat_interleave(group_size)
    uncond = None
    if adapter.uses_cfg(guidance_scale):
        uncond = adapter.encode_prompt([negative_prompt] * len(prompts)).repeat_interleave(group_size)
    sigmas = flow_sigmas(num_steps, shift, adapter.schedule).float()
    shape = adapter.latent_shape(n, num_frames, height, width)
    per_group = (1 if shared_noise else group_size, *shape[1:])
    x = torch.cat([initial_noise(per_group, generator=g).expand(group_size, *shape[1:]) for g in generators])
    x = x.contiguous().to(device)
    store = torch.device(store_device) if store_device is not None else device
    traj = torch.empty((n, num_steps + 1, *shape[1:]), dtype=torch.float32, device=store)
    traj[:, 0] = x.to(store)
    log_probs = torch.zeros(n, num_steps)
    mask = sde_window_mask(num_steps, sde_window) if kind != "ode" else torch.zeros(num_steps, dtype=torch.bool)
    for i in tqdm(range(num_steps), desc="rollout", disable=not progress, leave=False):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        v = _velocity(adapter, x, s, cond, uncond, guidance_scale, model, chunk_size or n)
        if mask[i]:
            noise = torch.cat([torch.randn((group_size, *shape[1:]), generator=g) for g in generators]).to(device)
            x, lp, _, _ = sde_step(kind, v, s, s_next, x, noise_level=noise_level, noise=noise)
            log_probs[:, i] = lp.cpu()
        else:
            x = ode_step(x, v, s, s_next)
        traj[:, i + 1] = x.to(store)
    videos = adapter.decode(x) if decode else None
    return Rollout(expanded, groups, traj, sigmas, log_probs, mask, cond, uncond, videos)


def _velocity(adapter, x, s, cond, uncond, guidance_scale, model, chunk: int) -> torch.Tensor:
    parts = []
    for a in range(0, x.shape[0], chunk):
        idx = torch.arange(a, min(a + chunk, x.shape[0]))
        c = cond.index(idx)
        u = None if uncond is None else uncond.index(idx)
        parts.append(adapter.predict_velocity(x[idx], s, c, u, guidance_scale, model=model).float())
    return torch.cat(parts)


def step_log_prob(
    adapter: VideoModelAdapter,
    batch: Rollout,
    step: int,
    *,
    guidance_scale: float = 1.0,
    kind: str = "dance",
    noise_level: float = 0.3,
    model: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-prob [B] of the stored transition x_step → x_{step+1} under the current policy (with gradients), and
    the step's Gaussian mean and std (for the KL term)."""
    device = adapter.device
    x = batch.latents[:, step].to(device)
    x_next = batch.latents[:, step + 1].to(device)
    s, s_next = batch.sigmas[step].item(), batch.sigmas[step + 1].item()
    v = adapter.predict_velocity(x, s, batch.cond, batch.uncond, guidance_scale, model=model).float()
    _, log_prob, mean, std = sde_step(kind, v, s, s_next, x, noise_level=noise_level, prev_sample=x_next)
    return log_prob, mean, std


def step_kwargs(cfg: RolloutConfig) -> dict[str, Any]:
    """How the policy steps: CFG scale, SDE kind and noise level (the same in the rollout and every recomputation)."""
    return {"guidance_scale": cfg.guidance_scale, "kind": cfg.sde, "noise_level": cfg.noise_level}


def iteration_rollout(
    adapter: VideoModelAdapter,
    cfg: RolloutConfig,
    prompts: list[str],
    size: tuple[int, int, int],
    shift: float,
    *,
    seed: int,
    step: int,
    first_index: int = 0,
    chunk_size: int | None = None,
    model: torch.nn.Module | None = None,
) -> Rollout:
    """Iteration `step`'s rollout of `prompts` (global indices from `first_index`) as `cfg` sets it up: group j's
    noise comes from `step_generator(seed, step, first_index + j, 1)`; `size` is (frames, height, width)."""
    return rollout(
        adapter,
        prompts,
        group_size=cfg.group_size,
        num_frames=size[0],
        height=size[1],
        width=size[2],
        num_steps=cfg.steps,
        shift=shift,
        negative_prompt=cfg.negative_prompt,
        sde_window=tuple(cfg.sde_window) if cfg.sde_window else None,
        shared_noise=cfg.shared_noise,
        generators=[step_generator(seed, step, first_index + j, 1) for j in range(len(prompts))],
        model=model,
        chunk_size=chunk_size,
        **step_kwargs(cfg),
    )


def policy_rollout(
    adapter: VideoModelAdapter,
    cfg: Any,
    prompts: list[str],
    size: tuple[int, int, int],
    shift: float,
    step: int,
    first_index: int = 0,
    model: torch.nn.Module | None = None,
) -> Rollout:
    """Iteration `step`'s rollout of `prompts` (global indices from `first_index`) for an RL config `cfg` (its
    `rollout:` and `train.seed`), transformer calls chunked like the update's micro-batches (`train.micro_batch`: so
    the update recomputes each log-prob bit-identically)."""
    kw = {"seed": cfg.train.seed, "step": step, "first_index": first_index, "chunk_size": cfg.train.micro_batch}
    return iteration_rollout(adapter, cfg.rollout, prompts, size, shift, model=model, **kw)
