"""SDE steps with log-probabilities for GRPO on flow-matching models.

A flow model predicts the velocity v = v_θ(x_i, σ_i) (x_σ = (1−σ)·x0 + σ·noise, so v ≈ noise − x0). The
deterministic sampler takes the Euler step x_{i+1} = x_i + Δσ·v with Δσ = σ_{i+1} − σ_i < 0. GRPO needs a
stochastic policy, so each step becomes a Gaussian x_{i+1} ~ N(μ, std²) with the same marginals as the ODE:

* `"dance"` (DanceGRPO, constant η = `noise_level`, typically 0.3):
      x̂0 = x_i − σ_i·v,   ŝ = −(x_i − (1−σ_i)·x̂0)/σ_i²   (the score of the noised marginal)
      μ = x_i + Δσ·(v − ½η²·ŝ),   std = η·√(σ_i − σ_{i+1})
* `"flow"` (Flow-GRPO, σ_t = a·√(σ/(1−σ)) with a = `noise_level`, typically 0.7; at σ = 1 the denominator
  uses `sigma_max`, the schedule's first σ below 1, which defaults to σ_{i+1}):
      μ = x_i·(1 + σ_t²·Δσ/(2σ_i)) + v·(1 + σ_t²·(1−σ_i)/(2σ_i))·Δσ,   std = σ_t·√(−Δσ)
* `"cps"` (coefficients-preserving sampling, η = `noise_level` in [0, 1)): predict x̂0 = x_i − σ_i·v and
  x̂1 = x_i + (1−σ_i)·v, then re-noise to σ_{i+1} keeping the total noise coefficient σ_{i+1}:
      std = σ_{i+1}·sin(ηπ/2),   μ = (1−σ_{i+1})·x̂0 + √(σ_{i+1}² − std²)·x̂1

All three reduce to the ODE step when the noise level is 0. `log_prob` is the closed-form Gaussian log-density
of x_{i+1} under N(μ, std²), **reduced by the mean over all non-batch elements** (not the sum — the sum is the
exact joint log-density; the mean keeps ratios and KL in a range independent of the latent size, as DanceGRPO
and Flow-GRPO do). It includes the −log std − ½·log 2π terms, which cancel in ratios between policies with the
same std. Where std = 0 (noise level 0, or σ_{i+1} = 0 for "cps") the step is deterministic and `log_prob` is 0.
"dance" and "flow" are **not** deterministic at the last step: dance's std η·√(σ_i − σ_{i+1}) is largest there
on a short schedule (`flow_sigmas(10, 3.0)` ends σ 0.25 → 0: at η = 0.5 the final latent keeps noise of sd 0.25)
and flow's a·√(σ_i/(1 − σ_i))·√σ_i is not 0 either, so a rollout that should end clean ends noisy unless the last
steps are taken as ODE steps (`sde_window`) or "cps" is used. Everything is computed in float32.
"""

from __future__ import annotations

import math

import torch

__all__ = ["KINDS", "gaussian_log_prob", "sde_step"]

KINDS = ("dance", "flow", "cps")


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """σ as a float32 tensor broadcastable over `like` [B, ...] (a scalar or one value per sample)."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.dim() == 0:
        return t.view(*([1] * like.dim()))
    if t.dim() == 1 and t.shape[0] == like.shape[0]:
        return t.view(-1, *([1] * (like.dim() - 1)))
    raise ValueError(f"sigma must be a scalar or one value per sample; got shape {tuple(t.shape)}")


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean over non-batch elements of log N(x; mean, std²) → [B]; 0 where std is 0 (a deterministic step)."""
    std = std.expand_as(mean) if std.dim() == mean.dim() else std
    safe = torch.where(std > 0, std, torch.ones_like(std))
    lp = -((x.float() - mean) ** 2) / (2 * safe**2) - torch.log(safe) - 0.5 * math.log(2 * math.pi)
    lp = torch.where(std > 0, lp, torch.zeros_like(lp))
    return lp.flatten(1).mean(dim=1)


def sde_step(
    kind: str,
    velocity: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    sample: torch.Tensor,
    *,
    noise_level: float,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sigma_max: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stochastic step from σ to σ_next → (prev_sample, log_prob [B], mean, std).

    `prev_sample` given: its log-probability under this step is evaluated (nothing is sampled; it is returned
    as is). Otherwise x_{i+1} = mean + std·noise with `noise` (or fresh N(0, 1) from `generator`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown SDE kind {kind!r}; expected one of {KINDS}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be ≥ 0, got {noise_level}")
    x = sample.float()
    v = velocity.float()
    s = _per_sample(sigma, x)
    s_next = _per_sample(sigma_next, x)
    dt = s_next - s

    if kind == "dance":
        eta = noise_level
        x0 = x - s * v
        score = -(x - (1 - s) * x0) / s.clamp_min(1e-12) ** 2
        mean = x + dt * (v - 0.5 * eta**2 * score)
        std = eta * torch.sqrt((s - s_next).clamp_min(0))
    elif kind == "flow":
        denom_sigma = s_next if sigma_max is None else _per_sample(sigma_max, x)
        one_minus = torch.where(s >= 1, 1 - denom_sigma, 1 - s)
        sig_t = noise_level * torch.sqrt(s / one_minus.clamp_min(1e-12))
        mean = x * (1 + sig_t**2 * dt / (2 * s)) + v * (1 + sig_t**2 * (1 - s) / (2 * s)) * dt
        std = sig_t * torch.sqrt((-dt).clamp_min(0))
    else:  # cps
        x0 = x - s * v
        x1 = x + (1 - s) * v
        std = s_next * math.sin(noise_level * math.pi / 2)
        mean = (1 - s_next) * x0 + torch.sqrt((s_next**2 - std**2).clamp_min(0)) * x1
    std = std.expand(x.shape[0], *([1] * (x.dim() - 1))) if std.shape[0] == 1 else std

    if prev_sample is None:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        prev_sample = mean + std * noise.float()
    log_prob = gaussian_log_prob(prev_sample, mean, std)
    return prev_sample, log_prob, mean, std
