"""DMD2 maths for flow-matching models, as pure functions (the loop is `vidpost.pipelines.distill_dmd2`).

Convention (`vidpost.models.sampling`): x_σ = (1 − σ)·x0 + σ·ε, the networks predict the velocity v = ε − x0, so the
clean estimate of a velocity is x̂0 = x_σ − σ·v and the score is s(x_σ) = −(x_σ − (1 − σ)·x̂0)/σ².

Generator (the few-step student, `N` Euler steps on σ_0 = 1 > … > σ_N = 0): at state x_k it predicts v_G(x_k, σ_k)
and x̂0_k = x_k − σ_k·v_G; the next state is the Euler step x_{k+1} = x_k + (σ_{k+1} − σ_k)·v_G (the same as
re-noising x̂0_k with the noise v_G implies); its output is x̂0_{N−1}. Backward simulation (`generator_states`):
each sample's training state x_k (k uniform in [0, N)) is reached by running the current generator itself from
fresh noise, so it is trained on the states it meets when sampling.

Distribution matching (DMD, Yin et al. 2023 eq. 7; DMD2, Yin et al. 2024): for a generator output x0 and a
re-noising x_t = (1 − σ)·x0 + σ·ε at σ drawn from the shifted uniform density on [t_min, t_max], with x̂0_real the
frozen teacher's clean estimate under CFG (velocity v_u + g·(v_c − v_u)) and x̂0_fake the fake-score network's (no
CFG), the gradient of KL(p_gen ‖ p_real) with respect to x0 is ∝ s_fake − s_real ∝ x̂0_fake − x̂0_real. DMD
normalises it per sample by the mean absolute error of the real estimate:
    g = (x̂0_fake − x̂0_real) / mean_{elements}(|x0 − x̂0_real|)
and the generator loss is `dmd_loss` = ½·mean((x0 − sg(x0 − g))²), whose gradient with respect to x0 is g/numel.

Fake score: the flow-matching loss on (detached) generator outputs, `fake_score_loss` = mean((v_fake(x_t, σ) −
(ε − x0))²), trained with several updates per generator update (two time scales).

GAN (optional, DMD2 §4.3): a small head D on the fake-score network's hidden states (a forward hook after one
block, averaged over tokens) classifies re-noised real latents from re-noised generator outputs; the non-saturating
losses are softplus(−D(real)) + softplus(D(fake)) for the head and the fake-score network, softplus(−D(fake)) for
the generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidpost.models.sampling import shift_sigmas
from vidpost.training.flow import per_sample


def x0_from_velocity(x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x̂0 = x − σ·v (σ per sample [B] or a float), in float32."""
    return x.float() - per_sample(sigma, x) * v.float()


def sample_sigmas(
    n: int, t_min: float, t_max: float, shift: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """σ = f_shift(u), u ~ U(t_min, t_max): the noise levels at which generator outputs are re-noised [n]."""
    u = t_min + (t_max - t_min) * torch.rand(n, generator=generator)
    return shift_sigmas(u, shift).float()


def dmd_gradient(x0: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """g = (x̂0_fake − x̂0_real) / mean(|x0 − x̂0_real|), the normaliser per sample (detached, float32)."""
    x0, x0_real, x0_fake = x0.detach().float(), x0_real.float(), x0_fake.float()
    scale = (x0 - x0_real).abs().flatten(1).mean(1).clamp_min(eps)
    return (x0_fake - x0_real) / per_sample(scale, x0)


def dmd_loss(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """½·mean((x0 − sg(x0 − g))²): d loss / d x0 = g / x0.numel()."""
    target = (x0.detach().float() - grad.float()).detach()
    return 0.5 * F.mse_loss(x0.float(), target)


def fake_score_loss(v_fake: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Flow matching on generator outputs: mean((v_fake − (ε − x0))²)."""
    return F.mse_loss(v_fake.float(), (noise - x0).float().detach())


def gan_head_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The head's (and fake-score network's) non-saturating loss: mean(softplus(−D(real))) + mean(softplus(D(fake)))."""
    return F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean()


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating GAN loss: mean(softplus(−D(fake)))."""
    return F.softplus(-logits_fake.float()).mean()


class GanHead(torch.nn.Module):
    """D: token-averaged hidden states [B, L, dim] → LayerNorm → Linear(dim, dim) → SiLU → Linear(dim, 1) → [B]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, dim)
        self.fc2 = torch.nn.Linear(dim, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = hidden.float().mean(1) if hidden.ndim == 3 else hidden.float()
        return self.fc2(F.silu(self.fc1(self.norm(h)))).squeeze(-1)


class FeatureTap:
    """Keeps the output (its first tensor) of one module on every forward pass: the GAN head's features."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.value = output[0] if isinstance(output, tuple) else output

    def pop(self) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("the GAN feature hook saw no forward pass")
        out, self.value = self.value, None
        return out

    def remove(self) -> None:
        self.handle.remove()
