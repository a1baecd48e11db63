"""DMD2's networks and sampling around the maths of `training.dmd` (`vidpost distill --method dmd2`; the algorithm is
`pipelines/distill_dmd2.py`'s docstring): the frozen teacher, the trainable copies (generator, fake score), the
student's schedules and backward simulation, its few-step sampler, real latents for the GAN head, the checkpointed
networks as one module, the sample grids and the student folder. Config arguments are the stage's sections
(`pipelines/distill_dmd2_config.py`)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from vidpost.models import VideoModelAdapter, load, resolve_model_path
from vidpost.models.base import DTYPES, VIDPOST_CONFIG, PromptEmbeds, read_vidpost_config, upcast_trainable
from vidpost.models.sampling import flow_sigmas, initial_noise
from vidpost.outputs import atomic_dir, write_text
from vidpost.sections import LoraConfig
from vidpost.training.dmd import GanHead, x0_from_velocity
from vidpost.training.lora import add_lora_to


def load_teacher(cfg: Any, device: torch.device | str) -> tuple[VideoModelAdapter, Path]:
    """The frozen teacher (its LoRA, if any, fused in) and its model folder."""
    model_dir = resolve_model_path(cfg.teacher)
    teacher = load(model_dir, dtype=DTYPES[cfg.dtype], device=device, lora=cfg.lora or None)
    if cfg.lora:
        teacher.transformer.fuse_lora()
        teacher.transformer.unload_lora()
    if getattr(teacher, "transformer_2", None) is not None:
        raise ValueError(f"{model_dir} has two expert transformers; dmd2 distils single-transformer models")
    return teacher, model_dir


def trainable_copy(transformer: torch.nn.Module, lora: LoraConfig, targets: list[str]) -> torch.nn.Module:
    """A deep copy of `transformer`, trainable in full (float32) or through a fresh LoRA."""
    net = copy.deepcopy(transformer)
    net.requires_grad_(not lora.enabled)
    if lora.enabled:
        add_lora_to(net, lora, targets)
    upcast_trainable(net)
    return net.train()


def generator_sigmas(teacher: VideoModelAdapter, cfg: Any, steps: int | None = None) -> torch.Tensor:
    """The student's σ schedule for `steps` Euler steps (default: `cfg.steps`)."""
    shift = cfg.shift if cfg.shift is not None else teacher.default_shift
    return flow_sigmas(cfg.steps if steps is None else steps, shift, cfg.schedule)


def training_schedules(teacher: VideoModelAdapter, cfg: Any) -> list[torch.Tensor]:
    """The schedules backward simulation draws from: one per `cfg.train_steps` entry, or `cfg.steps`'s alone."""
    return [generator_sigmas(teacher, cfg, n) for n in (cfg.train_steps or [cfg.steps])]


def pick_schedule(schedules: list[torch.Tensor], rng: torch.Generator) -> torch.Tensor:
    """One schedule per batch, drawn from `rng` only when there is a choice (a single-schedule run draws nothing)."""
    if len(schedules) == 1:
        return schedules[0]
    return schedules[int(torch.randint(len(schedules), (1,), generator=rng))]


def generator_states(
    teacher: VideoModelAdapter,
    generator: torch.nn.Module,
    cond: PromptEmbeds,
    sigmas: torch.Tensor,
    shape: tuple[int, ...],
    rng: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward simulation: (x_k [B, ...], σ_k [B]) with k uniform in [0, N) per sample, each reached by the generator's
    own Euler steps from fresh noise (no gradient)."""
    b, n = shape[0], len(sigmas) - 1
    stop = torch.randint(n, (b,), generator=rng)
    x = initial_noise(shape, generator=rng).to(teacher.device)
    out = x.clone()
    with torch.no_grad():
        for i in range(int(stop.max())):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            v = teacher.predict_velocity(x, s, cond, model=generator).float()
            x = x + (s_next - s) * v
            out[stop == i + 1] = x[stop == i + 1]
    return out, sigmas[stop].to(x.device)


def generator_output(
    teacher: VideoModelAdapter, generator: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: PromptEmbeds
) -> torch.Tensor:
    """x̂0 = x_k − σ_k·v_G(x_k, σ_k) (with gradient when grad mode is on)."""
    return x0_from_velocity(x, sigma, teacher.predict_velocity(x, sigma, cond, model=generator))


@torch.no_grad()
def sample_student(
    teacher: VideoModelAdapter,
    generator: torch.nn.Module,
    cond: PromptEmbeds,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """The student's N-step Euler sample (float32 latents) from `noise`."""
    x = noise.float()
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x = x + (s_next - s) * teacher.predict_velocity(x, s, cond, model=generator).float()
    return x


class RealLatents:
    """Real clips for the GAN head: a `vidpost sft precompute` latent cache; `batch(n, rng)` → (latents, embeddings)."""

    def __init__(self, cache_dir: str, shape: tuple[int, ...]) -> None:
        from vidpost.media.data import LatentCache

        self.cache = LatentCache(cache_dir)
        self.index = [i for i, lat in enumerate(self.cache.latents) if tuple(lat.shape) == tuple(shape[1:])]
        if not self.index:
            raise ValueError(f"gan.real_data {cache_dir}: no cached clip has the latent shape {tuple(shape[1:])}")

    def batch(self, n: int, rng: torch.Generator, device: torch.device | str) -> tuple[torch.Tensor, PromptEmbeds]:
        pick = [self.index[i] for i in torch.randint(len(self.index), (n,), generator=rng).tolist()]
        c = self.cache
        embeds = PromptEmbeds(
            torch.stack([c.embeds[i] for i in pick]),
            None if c.masks[pick[0]] is None else torch.stack([c.masks[i] for i in pick]),
            None if c.pooled[pick[0]] is None else torch.stack([c.pooled[i] for i in pick]),
        )
        return torch.stack([c.latents[i] for i in pick]).float().to(device), embeds.to(device)


class Trainables(torch.nn.Module):
    """The trained networks as one module (what checkpoints save): generator, fake score and the optional head."""

    def __init__(self, generator: torch.nn.Module, fake_score: torch.nn.Module, head: GanHead | None) -> None:
        super().__init__()
        self.generator, self.fake_score, self.head = generator, fake_score, head

    def groups(self) -> dict[str, list[torch.nn.Parameter]]:
        mods = {"generator": self.generator, "fake_score": self.fake_score, "head": self.head}
        return {k: [p for p in m.parameters() if p.requires_grad] for k, m in mods.items() if m is not None}


def write_samples(
    teacher: VideoModelAdapter,
    generator: torch.nn.Module,
    prompts: list[str],
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    out_dir: Path,
    step: int,
    write: bool = True,
) -> Path | None:
    """`samples/step_N.png`: the student's samples of the fixed prompts from fixed noise (sampled, not written, when
    `write` is false)."""
    from vidpost.media.video_io import contact_sheet

    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        videos = teacher.decode(sample_student(teacher, generator, teacher.encode_prompt(prompts), sigmas, noise))
    generator.train(was_training)
    if not write:
        return None
    path = out_dir / "samples" / f"step_{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return contact_sheet(videos, path, labels=prompts)


def save_student(
    teacher: VideoModelAdapter, generator: torch.nn.Module, teacher_dir: Path, cfg: Any, path: Path
) -> Path:
    """The student as a complete diffusers model folder (a LoRA generator is fused) whose `vidpost.json` sets its
    sampling: `generation.steps` = N, `default_guidance_scale` 1, its shift and schedule, and where it came from."""
    net = copy.deepcopy(generator)
    if cfg.lora.enabled:
        net.fuse_lora()
        net.unload_lora()
    dtype = next(teacher.transformer.parameters()).dtype
    if next(net.parameters()).dtype != dtype:
        net = net.to(dtype)
    net = net.eval().requires_grad_(False)
    student = copy.copy(teacher)
    student.transformer = net
    student.default_guidance_scale = 1.0
    student.default_shift = cfg.generator.shift if cfg.generator.shift is not None else teacher.default_shift
    student.schedule = cfg.generator.schedule
    student.generation = {**(teacher.generation or {}), "steps": cfg.generator.steps}
    with atomic_dir(path, what=f"the student folder {path}") as tmp:
        student.save_pretrained(tmp)
        _write_student_meta(tmp, teacher_dir, cfg)
    return path


def _write_student_meta(path: Path, teacher_dir: Path, cfg: Any) -> None:
    """The student's vidpost.json: its own sampling settings over the teacher's generation defaults, and its source."""
    meta = read_vidpost_config(path)
    teacher_meta = read_vidpost_config(teacher_dir)
    meta["generation"] = {**teacher_meta.get("generation", {}), **meta.get("generation", {})}
    meta["distilled"] = {
        "method": "dmd2",
        "teacher": cfg.model.teacher,
        "teacher_lora": cfg.model.lora or None,
        "teacher_guidance_scale": cfg.dmd.guidance_scale,
        "steps": cfg.generator.steps,
        "train_steps": cfg.generator.train_steps or [cfg.generator.steps],
    }
    write_text(path / VIDPOST_CONFIG, json.dumps(meta, indent=2) + "\n")
