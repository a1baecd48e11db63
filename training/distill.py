"""The pieces of distilling a teacher's velocity into a student that every distiller shares (LiT distillation
`vidpost distill`, quantisation-aware recovery `vidpost qat`): the data section, the training states taken from the
teacher's own ODE trajectories at continuous noise levels, the velocity (+ attention) matching loss, the student's
copy of the teacher and the generation defaults it carries. The algorithm is `pipelines/distill.py`'s docstring."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vidpost.config import Fraction, NonNegativeFloat, PositiveFloat, PositiveInt
from vidpost.models import VideoModelAdapter
from vidpost.models.attention import attention_sites
from vidpost.models.base import PromptEmbeds, read_vidpost_config
from vidpost.models.sampling import initial_noise
from vidpost.outputs import write_text
from vidpost.sections import PromptPool, VideoSize
from vidpost.seeding import step_generator


@dataclass
class DistillDataConfig(VideoSize, PromptPool):
    steps: PositiveInt = 10
    """Euler steps of the teacher trajectories the training states are taken from"""
    shift: PositiveFloat | None = None
    """schedule shift of the trajectories (null: the teacher's default)"""
    guidance_scale: NonNegativeFloat = 5.0
    """CFG scale of the teacher trajectories"""
    uncond_prob: Fraction = 0.2
    """probability that a sample is distilled on the empty prompt (the CFG negative branch)"""


def copy_adapter(teacher: VideoModelAdapter) -> VideoModelAdapter:
    """A second adapter sharing the teacher's VAE and text encoder, with deep copies of its transformer(s) and its own
    attention context."""
    student = copy.copy(teacher)
    student.__dict__.pop("_attention_state", None)
    student.transformer = copy.deepcopy(teacher.transformer)
    if getattr(teacher, "transformer_2", None) is not None:
        student.transformer_2 = copy.deepcopy(teacher.transformer_2)
    return student


class AttentionTap:
    """Forward hooks that keep the outputs of the given layers' attention modules (tuples: the non-None parts)."""

    def __init__(self, transformer: torch.nn.Module, layers: list[int] | None) -> None:
        self.outputs: dict[int, list[torch.Tensor]] = {}
        self.handles = []
        for layer, attn, _ in attention_sites(transformer):
            if layers is None or layer in layers:
                self.handles.append(attn.register_forward_hook(self._hook(layer)))

    def _hook(self, layer: int):
        def hook(module, args, output):
            parts = output if isinstance(output, tuple) else (output,)
            self.outputs[layer] = [o for o in parts if o is not None]

        return hook

    def pop(self) -> dict[int, list[torch.Tensor]]:
        out, self.outputs = self.outputs, {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def teacher_states(
    teacher: VideoModelAdapter,
    cond: PromptEmbeds,
    uncond: PromptEmbeds,
    shape: tuple[int, ...],
    sigmas: torch.Tensor,
    guidance_scale: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [B, ...] float32, σ [B]): teacher ODE states at random continuous noise levels (see step 2 above)."""
    b, n = shape[0], len(sigmas) - 1
    stop = torch.randint(n, (b,), generator=generator)
    frac = torch.rand(b, generator=generator)
    x = initial_noise(shape, generator=generator).to(teacher.device)
    out_x = torch.empty_like(x)
    out_s = torch.empty(b)
    state = teacher.attention_state
    try:
        for i in range(int(stop.max()) + 1):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            state.set_step(i, n, s)
            v = teacher.predict_velocity(x, s, cond, uncond, guidance_scale).float()
            here = stop == i
            if here.any():
                sig = s - (1.0 - frac[here]) * (s - s_next)  # in (σ_{i+1}, σ_i]
                d = (sig - s).to(x.device).view(-1, *[1] * (x.ndim - 1))
                out_x[here] = x[here] + d * v[here]
                out_s[here] = sig
            x = x + (s_next - s) * v
    finally:
        state.clear_step()
    return out_x, out_s


def distill_loss(
    v_student: torch.Tensor,
    v_teacher: torch.Tensor,
    attn_student: dict[int, list[torch.Tensor]],
    attn_teacher: dict[int, list[torch.Tensor]],
    attn_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """mean((v_S − v_T)²) + λ·Σ_layers mean((a_S − a_T)²); returns (loss, logged parts)."""
    velocity = ((v_student.float() - v_teacher.float()) ** 2).mean()
    attn = v_student.new_zeros((), dtype=torch.float32)
    for layer, parts in attn_student.items():
        for a_s, a_t in zip(parts, attn_teacher[layer], strict=True):
            attn = attn + ((a_s.float() - a_t.float()) ** 2).mean()
    loss = velocity + attn_weight * attn
    return loss, {"loss_velocity": float(velocity.detach()), "loss_attention": float(attn.detach())}


def distill_batch(
    teacher: VideoModelAdapter,
    pool: list[str],
    null: PromptEmbeds,
    cfg: Any,
    shape: tuple[int, ...],
    sigmas: torch.Tensor,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor, PromptEmbeds]:
    """The step's training batch of a distiller config `cfg` (its `data:` and `train:`): (x, σ, conditioning), all
    from generators seeded by (seed, step)."""
    g = step_generator(cfg.train.seed, step)
    b = cfg.train.batch_size
    idx = torch.randint(len(pool), (b,), generator=g).tolist()
    cond = teacher.encode_prompt([pool[i] for i in idx])
    uncond = null.repeat_interleave(b)
    x, sig = teacher_states(teacher, cond, uncond, (b, *shape[1:]), sigmas, cfg.data.guidance_scale, g)
    drop = torch.rand(b, generator=g) < cfg.data.uncond_prob
    embeds = PromptEmbeds.cat([uncond.index([j]) if drop[j] else cond.index([j]) for j in range(b)])
    return x, sig, embeds


def carry_generation_settings(teacher_dir: Path, student_dir: Path) -> None:
    """Copy the teacher's vidpost.json entries the student's lacks (e.g. its `generation` defaults)."""
    from vidpost.models.base import VIDPOST_CONFIG

    merged = read_vidpost_config(teacher_dir) | read_vidpost_config(student_dir)
    write_text(student_dir / VIDPOST_CONFIG, json.dumps(merged, indent=2) + "\n")
