"""Stage 4 (inference optimisation) — LiT distillation: a linear-attention student learns the dense teacher's velocity
and attention outputs.

    vidpost distill --config configs/shapes/distill.yaml [dotted.overrides=...] [--resume latest]

(`vidpost distill --method dmd2`, or a YAML with `method: dmd2`, is few-step distillation: `distill_dmd2`.)

Set-up: teacher = the dense model (`model.teacher`, default the shipped Shapes SFT model), frozen. Student = a
copy of the teacher's transformer (weight inheritance: every weight, Q/K/V/O included) with the attention
implementation "lit" (`vidpost.models.lit`) installed on `student.layers` (null = all; a list = hybrid model,
the other layers keep softmax attention). `student.inherit: false` is the ablation that re-initialises the Q/K/V/O
projections of the LiT layers. `student.trainable` picks what trains: "all" (the whole student transformer),
"attention" (the attention modules of the LiT layers, LiT parameters included) or "lit" (LiT parameters only).

One optimizer step (everything random is drawn from a generator seeded by (seed, step), so a resumed run equals
an uninterrupted one):
  1. prompts  ← `batch_size` prompts from the pool (the Shapes train split's captions by default).
  2. states   ← teacher ODE trajectories (Euler, CFG `data.guidance_scale`, `data.steps` steps on the model's
                shifted schedule σ_0 = 1 > … > σ_N = 0) from fresh noise; sample b stops at a uniform step
                i_b ∈ [0, N) and at a uniform σ_b ∈ (σ_{i_b+1}, σ_{i_b}]:
                x_b = x_{i_b} + (σ_b − σ_{i_b})·v̂_{i_b}   (a partial Euler step with the teacher's guided velocity),
                so the student sees the teacher's own ODE marginals at continuous noise levels.
  3. branch   ← with probability `data.uncond_prob` a sample is conditioned on the empty prompt (the CFG
                negative branch the sampler also evaluates), else on its prompt.
  4. loss     ← mean((v_S(x, σ, c) − v_T(x, σ, c))²) + λ·Σ_{l ∈ LiT layers} mean((a_S^l − a_T^l)²)
                with a^l the output of layer l's attention module (after the output projection), captured by
                forward hooks on both models; λ = `train.attn_weight`.
  5. clip the gradient norm, AdamW step, lr schedule (as `vidpost sft`).

Departures from LiT: no progressive (layer-by-layer) schedule; the data are teacher ODE states rather than real
clips (the student never needs the training set); one process (no data parallelism).

Output: checkpoints (`checkpoints/step_N`, the trainable weights incl. LiT parameters, optimizer, scheduler,
RNG; `--resume latest`), `history.json`, tensorboard logs, `curves.png`, and `final/`: the student folder
(`vidpost.models.lit.save_lit_student`: a diffusers model folder + `lit.safetensors` + `lit.json`), which
`vidpost.models.load` (and so `vidpost generate --model`, `vidpost shapes eval --models`) reinstalls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from vidpost.config import PositiveInt
from vidpost.evaluation.prompts import load_prompt_pool
from vidpost.models import VideoModelAdapter, load, resolve_model_path
from vidpost.models.attention import AttentionConfig, attention_sites, install_attention
from vidpost.models.base import DTYPES, upcast_trainable
from vidpost.models.lit import lit_modules, reinit_attention_projections, save_lit_student
from vidpost.models.sampling import flow_sigmas
from vidpost.outputs import atomic_dir
from vidpost.sections import CheckpointConfig, LogConfig, OptimConfig
from vidpost.training.distill import (
    AttentionTap,
    DistillDataConfig,
    carry_generation_settings,
    copy_adapter,
    distill_batch,
    distill_loss,
)
from vidpost.training.loop import Trainer
from vidpost.training.plots import Panel, history_curves, plot_panels
from vidpost.training.recovery import velocity_probe
from vidpost.training.runner import TrainResult, one_run_per_output, stage_main
from vidpost.training.sampling import video_size_and_shift

# ---- configuration ----------------------------------------------------------------------------------------------


@dataclass
class DistillModelConfig:
    teacher: str = "shapes"
    """the dense teacher: a diffusers-format model directory or preset"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of the teacher and of the student's frozen parts (trainable weights are kept in float32)"""


@dataclass
class StudentConfig:
    layers: list[int] | None = None
    """video self-attention layers that use "lit" (null: all; a list: a hybrid model)"""
    options: dict[str, Any] = field(default_factory=dict)
    """"lit" options: heads (null: the teacher's), dwc_kernel (3; 0 = no conv), eps"""
    inherit: bool = True
    """keep the teacher's Q/K/V/O projections in the LiT layers (false: re-initialise them, the ablation)"""
    trainable: Literal["all", "attention", "lit"] = "all"
    """what trains: the whole student transformer, the LiT layers' attention modules, or the LiT parameters"""


@dataclass
class DistillTrainConfig:
    max_steps: PositiveInt = 300
    batch_size: PositiveInt = 8
    attn_weight: float = 1.0
    """λ of the per-layer attention-output loss (0: velocity distillation only)"""
    seed: int = 0


@dataclass
class DistillConfig:
    method: Literal["lit"] = "lit"
    """the distillation method (`vidpost distill --method dmd2` is the few-step one)"""
    output_dir: str = "runs/distill"
    model: DistillModelConfig = field(default_factory=DistillModelConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4))
    train: DistillTrainConfig = field(default_factory=DistillTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=100))
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.data.uncond_prob <= 1.0:
            raise ValueError(f"data.uncond_prob must be in [0, 1], got {self.data.uncond_prob}")
        if self.data.steps < 1 or self.train.batch_size < 1 or self.train.max_steps < 0:
            raise ValueError("data.steps and train.batch_size must be >= 1, train.max_steps >= 0")
        if self.train.attn_weight < 0:
            raise ValueError(f"train.attn_weight must be >= 0, got {self.train.attn_weight}")


# ---- pieces -------------------------------------------------------------------------------------------------------


def attention_config(cfg: StudentConfig) -> AttentionConfig:
    return AttentionConfig("lit", layers=cfg.layers, options=dict(cfg.options))


def make_student(teacher: VideoModelAdapter, cfg: StudentConfig, seed: int = 0) -> VideoModelAdapter:
    """A second adapter sharing the teacher's VAE and text encoder, with a deep copy of its transformer(s), "lit"
    installed on `cfg.layers`, the LiT layers' projections re-initialised when `cfg.inherit` is false, and
    `requires_grad` set per `cfg.trainable` (other weights frozen)."""
    student = copy_adapter(teacher)
    transformers = [t for t in (student.transformer, getattr(student, "transformer_2", None)) if t is not None]
    if not cfg.inherit:
        reinit_attention_projections(student, cfg.layers, seed)
    install_attention(student, attention_config(cfg))
    for t in transformers:
        t.requires_grad_(False)
        if cfg.trainable == "all":
            t.requires_grad_(True)
        else:
            for layer, attn, _ in attention_sites(t):
                if cfg.layers is None or layer in cfg.layers:
                    (attn if cfg.trainable == "attention" else attn.processor.impl).requires_grad_(True)
        upcast_trainable(t)
    return student


# ---- the loop -----------------------------------------------------------------------------------------------------


@one_run_per_output
def train(cfg: DistillConfig, resume: str | None = None) -> TrainResult:
    trainer = Trainer("distill", cfg, one_process=True)
    model_dir = resolve_model_path(cfg.model.teacher)
    teacher = load(model_dir, dtype=DTYPES[cfg.model.dtype], device=trainer.device)
    size, shift = video_size_and_shift(teacher, model_dir, cfg.data)
    sigmas = flow_sigmas(cfg.data.steps, shift, teacher.schedule)
    shape = teacher.latent_shape(cfg.train.batch_size, *size)
    student = make_student(teacher, cfg.student, cfg.train.seed)
    transformer = student.transformer
    params = [p for p in transformer.parameters() if p.requires_grad]
    trainer.optimize(params)
    pool = load_prompt_pool(cfg.data.prompts, cfg.data.pool_size)
    null = teacher.encode_prompt([""])
    probe_latents = torch.randn((1, *shape[1:]), generator=torch.Generator().manual_seed(cfg.train.seed))
    probe = velocity_probe(student, probe_latents.to(teacher.device), teacher.encode_prompt(pool[:1]))
    trainer.begin(resume, model=transformer, probe=probe)

    taps = [AttentionTap(teacher.transformer, cfg.student.layers), AttentionTap(transformer, cfg.student.layers)]
    teacher.transformer.eval()
    transformer.train()
    try:
        while trainer.running:
            x, sig, embeds = distill_batch(teacher, pool, null, cfg, shape, sigmas, trainer.step)
            with torch.no_grad():
                v_t = teacher.predict_velocity(x, sig, embeds)
            a_t = taps[0].pop()
            v_s = student.predict_velocity(x, sig, embeds)
            a_s = taps[1].pop()
            loss, parts = distill_loss(v_s, v_t, a_s, a_t, cfg.train.attn_weight)
            trainer.check_finite("distillation loss", float(loss.detach()))
            loss.backward()
            grad_norm = trainer.optimizer_step(params)
            trainer.end_step({"loss": float(loss.detach()), **parts}, grad_norm=grad_norm)
    finally:
        for tap in taps:
            tap.remove()
        trainer.close_bar()
    out_dir = Path(cfg.output_dir)
    final = out_dir / "final"
    with atomic_dir(final, what=f"the student folder {final}") as tmp:
        save_lit_student(student, attention_config(cfg.student), tmp)
        carry_generation_settings(model_dir, tmp)
    curves = history_curves(trainer.whole_history, ("loss", "loss_velocity", "loss_attention"), alpha=0.8)
    plot_panels(out_dir / "curves.png", [Panel("LiT distillation", curves, log_y=True)], panel_size=(6, 3.5))
    lit_layers = sorted(int(k.split(".")[1]) for k in lit_modules(student))
    result = TrainResult(
        kind="student",
        final=final,
        steps=trainer.step,
        base_model=str(model_dir.resolve()),
        extra={"student": student, "lit_layers": lit_layers},
    )
    return trainer.finish(result)


# ---- command line -------------------------------------------------------------------------------------------------


METHODS = ("lit", "dmd2")


def method_of(argv: list[str]) -> tuple[str, list[str]]:
    """The distillation method (`--method M`, else the `method:` key of the `--config` YAML, else "lit") and the
    arguments without `--method`."""
    from vidpost.config import parse_yaml

    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2 :]
        if a.startswith("--method="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1 :]
    for i, a in enumerate(argv):
        path = argv[i + 1] if a == "--config" and i + 1 < len(argv) else a[9:] if a.startswith("--config=") else None
        if path and Path(path).is_file():
            data = parse_yaml(Path(path).read_text(), f"config file {path}") or {}
            if isinstance(data, dict) and data.get("method"):
                return str(data["method"]), argv
    return "lit", argv


def main(argv: list[str] | None = None) -> int:
    import sys

    method, argv = method_of(sys.argv[1:] if argv is None else argv)
    if method == "dmd2":
        from vidpost.pipelines import distill_dmd2

        return distill_dmd2.main(argv)
    if method != "lit":
        print(f"error: --method must be one of {', '.join(METHODS)}, got {method!r}", file=sys.stderr)
        return 2
    about = "LiT linear-attention distillation (--method lit, the default; --method dmd2: few-step DMD2 distillation)."
    return stage_main(DistillConfig, train, argv, "distill", about, "student", methods=(METHODS, "lit"))


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
