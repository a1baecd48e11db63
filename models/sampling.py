"""Flow-matching sampling: the sigma schedule with shift, classifier-free guidance and the ODE Euler step.

Convention: x_σ = (1 − σ)·x0 + σ·ε, the model predicts the velocity v = ε − x0, σ runs from 1 (noise) to 0.

Schedule. With shift s > 0 and f(u) = s·u / (1 + (s − 1)·u):
- `"uniform"`: σ_i = f(u_i), u = linspace(1, 0, N + 1) — `flow_sigmas`' default, and the schedule of diffusers'
  `HunyuanVideoPipeline` (which passes these sigmas to its scheduler).
- `"diffusers"`: what `FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(N)` yields and therefore what
  `WanPipeline` uses: u = linspace(1, f(1/1000), N), σ_i = f(u_i) for i < N, σ_N = 0. (The scheduler's
  smallest training sigma f(1/1000) is shifted a second time; we reproduce that so our sampler matches the stock
  pipeline bit for bit in float32.) Each adapter names the schedule of its family's reference pipeline.
The transformer sees the timestep t_i = 1000·σ_i.

ODE step (Euler): x_{i+1} = x_i + (σ_{i+1} − σ_i)·v(x_i, σ_i), computed in float32.
CFG: v = v_u + g·(v_c − v_u) with a separate pass for the negative prompt (the adapter decides what "guidance"
means for its family: Wan uses true CFG; HunyuanVideo feeds g to its guidance embedding and runs true CFG only
with `true_cfg_scale > 1`).

`sample()` draws the initial noise exactly as the diffusers pipelines do (one CPU `torch.Generator` seeded with
`seed`, float32, shape [B, C, T', H', W']) so that for the same components, seed and settings it reproduces
`WanPipeline(...)(output_type="pt")` and `HunyuanVideoPipeline` to float32 rounding (tests/test_parity.py).
The stochastic (SDE) step used by GRPO lives in `vidpost.rl.sde` and reuses `flow_sigmas` and the loop below.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .base import PromptEmbeds, VideoModelAdapter

SCHEDULES = ("diffusers", "uniform")


def shift_sigmas(u: np.ndarray | torch.Tensor, shift: float):
    """f(u) = shift·u / (1 + (shift − 1)·u)."""
    return shift * u / (1 + (shift - 1) * u)


def flow_sigmas(num_steps: int, shift: float = 1.0, schedule: str = "uniform", num_train_timesteps: int = 1000):
    """The N + 1 sigmas (σ_0 = 1 … σ_N = 0) of an N-step sampler, float32 tensor. See the module docstring."""
    if num_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if schedule == "uniform":
        u = np.linspace(1.0, 0.0, num_steps + 1)[:-1].astype(np.float32)
        sig = shift_sigmas(u, shift)
    elif schedule == "diffusers":
        train_u = torch.tensor([1.0 / num_train_timesteps], dtype=torch.float32)
        sigma_min = float(shift_sigmas(train_u, shift)[0])
        t = np.linspace(1.0 * num_train_timesteps, sigma_min * num_train_timesteps, num_steps)
        sig = shift_sigmas(t / num_train_timesteps, shift)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    sig = torch.from_numpy(np.asarray(sig)).to(torch.float32)
    return torch.cat([sig, torch.zeros(1)])


def ode_step(
    sample: torch.Tensor, velocity: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor
):
    """Euler step of the probability-flow ODE from σ to σ_next, in float32."""
    return sample.float() + (sigma_next - sigma) * velocity.float()


def initial_noise(
    shape: tuple[int, ...], seed: int | None = None, generator: torch.Generator | None = None, device="cpu"
) -> torch.Tensor:
    """Gaussian noise drawn on a CPU generator (as diffusers' `randn_tensor` does) then moved to `device`."""
    if generator is None:
        generator = torch.Generator("cpu")
        if seed is not None:
            generator.manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device).to(device)


StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
"""callback(step_index, sigma, latents_after_step)"""


def frame_slice(index: int) -> slice:
    """The one latent frame `index` (negative counts from the end) as a slice that keeps the frame axis."""
    return slice(index, index + 1 if index != -1 else None)


def denoise(
    adapter: VideoModelAdapter,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    cond: PromptEmbeds,
    uncond: PromptEmbeds | None = None,
    guidance_scale: float = 1.0,
    *,
    progress: bool = False,
    callback: StepCallback | None = None,
    given_frame: torch.Tensor | None = None,
    given_index: int = 0,
) -> torch.Tensor:
    """Run the ODE from sigmas[0] to sigmas[-1] with Euler steps; returns float32 latents.

    With `given_frame` (clean latents [B, C, 1, H, W]) latent frame `given_index` is held at it and given to the
    model at timestep 0 (`predict_velocity(given=…)`; index 0 is Wan2.2 TI2V's image-to-video): the rest of the
    clip is generated around it. The adapter's `attention_state` carries (step, number of steps, σ) to the
    attention processors meanwhile, and step caches (`models.inference`) start fresh."""
    from .inference import reset_step_caches

    reset_step_caches(adapter)
    x = latents.float()
    keyed, at = {}, frame_slice(given_index)
    if given_frame is not None:
        given_frame = given_frame.float().to(x.device)
        x = x.clone()
        x[:, :, at] = given_frame
        mask = torch.zeros(x.shape[2], dtype=torch.bool, device=x.device)
        mask[given_index] = True
        keyed = {"given": mask}
    n = len(sigmas) - 1
    sigma_values = sigmas.tolist()
    state = adapter.attention_state
    try:
        for i in tqdm(range(n), desc="sampling", disable=not progress, leave=False):
            s, s_next = sigmas[i], sigmas[i + 1]
            state.set_step(i, n, sigma_values[i])
            v = adapter.predict_velocity(x, s.expand(x.shape[0]), cond, uncond, guidance_scale, **keyed)
            x = ode_step(x, v, s, s_next).to(v.dtype).float()
            if given_frame is not None:
                x[:, :, at] = given_frame
            if callback is not None:
                callback(i, s, x)
    finally:
        state.clear_step()
    return x


@torch.no_grad()
def sample(
    adapter: VideoModelAdapter,
    prompts: list[str] | str,
    *,
    num_frames: int,
    height: int,
    width: int,
    num_inference_steps: int,
    guidance_scale: float,
    shift: float,
    seed: int,
    negative_prompt: str | list[str] | None = None,
    schedule: str | None = None,
    latents: torch.Tensor | None = None,
    num_videos_per_prompt: int = 1,
    progress: bool = False,
    return_latents: bool = False,
    callback: StepCallback | None = None,
    keyframe: int | None = None,
) -> torch.Tensor:
    """Generate videos for `prompts`; returns float32 [B, C, T, H, W] in [0, 1] (or latents).

    B = len(prompts) · num_videos_per_prompt (each prompt repeated consecutively). The negative prompt defaults to
    "" as in WanPipeline. `schedule` defaults to the adapter family's reference schedule. `keyframe` (a latent
    frame index): generate in two passes from the same noise, the clip (of which only that latent frame is kept),
    then the rest of the clip around it (`denoise(given_frame=…)`), so that the prompt, not the noise, sets the
    motion; it needs a model trained with that frame given (`train.given_frame_share`) and costs two samplings.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("sample() needs at least one prompt")
    device = adapter.device
    b = len(prompts) * num_videos_per_prompt
    shape = adapter.latent_shape(b, num_frames, height, width)
    cond = adapter.encode_prompt(prompts).repeat_interleave(num_videos_per_prompt)
    uncond = None
    if adapter.uses_cfg(guidance_scale):
        neg = negative_prompt if negative_prompt is not None else ""
        neg = [neg] * len(prompts) if isinstance(neg, str) else list(neg)
        if len(neg) != len(prompts):
            raise ValueError(f"negative_prompt has {len(neg)} entries for {len(prompts)} prompts")
        uncond = adapter.encode_prompt(neg).repeat_interleave(num_videos_per_prompt)
    sigmas = flow_sigmas(num_inference_steps, shift, schedule or adapter.schedule).to(device)
    if latents is None:
        latents = initial_noise(shape, seed=seed, device=device)
    elif tuple(latents.shape) != shape:
        raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
    if keyframe is not None and not -shape[2] <= keyframe < shape[2]:
        raise ValueError(f"keyframe {keyframe} is not a latent frame of this clip (it has {shape[2]})")
    x = denoise(adapter, latents, sigmas, cond, uncond, guidance_scale, progress=progress, callback=callback)
    if keyframe is not None:
        key = x[:, :, frame_slice(keyframe)]
        kw = {"progress": progress, "given_frame": key, "given_index": keyframe}
        x = denoise(adapter, latents, sigmas, cond, uncond, guidance_scale, **kw)
    if return_latents:
        return x
    return adapter.decode(x)
