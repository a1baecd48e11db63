"""Stage 4d — quantisation-aware recovery: a LoRA trained through a low-precision recipe's fake quantisation.

    vidpost qat --config configs/shapes/qat-w4a4.yaml [dotted.overrides=...] [--resume latest]
    vidpost quantize eval --model shapes --recipes configs/quant/w4a4-int4.yaml runs/shapes-qat-w4a4/final

Set-up: teacher = the full-precision model (`model.teacher`), frozen. Student = a copy of its transformer with the
recipe installed (`vidpost.models.quant.install_quant`, the reference path) and calibrated as `vidpost quantize`
does; every quantised layer gets a LoRA on its weight (`QuantLinear.enable_qat`), which is all that trains. The
student computes Q_a(x̃)·Q_w(W̃ + ΔW)ᵀ: the values of the deployed quantised layer, with gradients passed straight
through both quantisers (STE) to ΔW = (alpha / rank)·B·A.

One optimizer step (everything random drawn from a generator seeded by (seed, step), so a resumed run equals an
uninterrupted one): the batch of `vidpost distill` — teacher ODE states at random continuous noise levels from the
train prompts, a share conditioned on the empty prompt (the CFG branch) — and the loss
mean((v_student − v_teacher)²), the quantised model's velocity distilled towards the full-precision one's (data-free:
the training clips are never needed). Then gradient clipping, AdamW, the lr schedule.

Output: checkpoints (the LoRA tensors, optimizer, scheduler; `--resume latest`), `history.json`, `curves.png` and
`final/`: the LoRA merged into the full-precision weights and saved as a quantised model folder (`quant.json` +
`quant.safetensors`, the same recipe and calibrated scales), so `vidpost.models.load` quantises it exactly as it was
trained: quantise after the merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from vidpost.config import NonNegativeFloat, PositiveInt
from vidpost.evaluation.prompts import load_prompt_pool
from vidpost.models import load, resolve_model_path
from vidpost.models.base import DTYPES
from vidpost.models.quant import install_quant, quant_modules, read_recipe, save_quant_folder
from vidpost.models.sampling import flow_sigmas
from vidpost.outputs import atomic_dir
from vidpost.pipelines.quantize import calibrate_recipe, resolve_keep_worst
from vidpost.sections import CheckpointConfig, LogConfig, OptimConfig
from vidpost.seeding import step_generator
from vidpost.training.distill import (
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


@dataclass
class QATModelConfig:
    teacher: str = "shapes"
    """the full-precision model: a diffusers-format model directory or preset"""
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass
class QATLoraConfig:
    rank: PositiveInt = 8
    alpha: NonNegativeFloat = 8.0


@dataclass
class QATTrainConfig:
    max_steps: PositiveInt = 200
    batch_size: PositiveInt = 8
    seed: int = 0


@dataclass
class QATConfig:
    recipe: str = "configs/quant/w4a4-int4.yaml"
    """the low-precision recipe (configs/quant/*.yaml) the model is trained through and saved with"""
    output_dir: str = "runs/qat"
    model: QATModelConfig = field(default_factory=QATModelConfig)
    lora: QATLoraConfig = field(default_factory=QATLoraConfig)
    data: DistillDataConfig = field(default_factory=lambda: DistillDataConfig(uncond_prob=0.2))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    train: QATTrainConfig = field(default_factory=QATTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=100))
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if self.lora.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.lora.rank}")
        if self.train.batch_size < 1 or self.train.max_steps < 0:
            raise ValueError("train.batch_size must be >= 1 and train.max_steps >= 0")
        if not Path(self.recipe).is_file():
            raise ValueError(f"recipe {self.recipe} does not exist")


@one_run_per_output
def train(cfg: QATConfig, resume: str | None = None) -> TrainResult:
    trainer = Trainer("qat", cfg, one_process=True)
    recipe = read_recipe(cfg.recipe)
    recipe.backend = "reference"  # trained through the exact fake quantisation; the saved recipe keeps its backend
    model_dir = resolve_model_path(cfg.model.teacher)
    teacher = load(model_dir, dtype=DTYPES[cfg.model.dtype], device=trainer.device)
    teacher.transformer.requires_grad_(False)
    size, shift = video_size_and_shift(teacher, model_dir, cfg.data)
    sigmas = flow_sigmas(cfg.data.steps, shift, teacher.schedule)
    shape = teacher.latent_shape(cfg.train.batch_size, *size)

    student = copy_adapter(teacher)
    resolve_keep_worst(student, model_dir, recipe)
    report = install_quant(student, recipe)
    calibrate_recipe(student, model_dir, recipe)
    transformer = student.transformer
    g = torch.Generator().manual_seed(cfg.train.seed)
    for module in quant_modules(transformer).values():
        module.enable_qat(cfg.lora.rank, cfg.lora.alpha, generator=g)

    params = [p for p in transformer.parameters() if p.requires_grad]
    trainer.optimize(params)
    pool = load_prompt_pool(cfg.data.prompts, cfg.data.pool_size)
    null = teacher.encode_prompt([""])
    probe_latents = torch.randn((1, *shape[1:]), generator=step_generator(cfg.train.seed, -1))
    probe = velocity_probe(student, probe_latents.to(teacher.device), teacher.encode_prompt(pool[:1]))
    trainer.begin(resume, model=transformer, probe=probe, desc=f"qat {recipe.name}")
    try:
        while trainer.running:
            x, sig, embeds = distill_batch(teacher, pool, null, cfg, shape, sigmas, trainer.step)
            with torch.no_grad():
                v_t = teacher.predict_velocity(x, sig, embeds)
            v_s = student.predict_velocity(x, sig, embeds)
            loss, _ = distill_loss(v_s, v_t, {}, {}, 0.0)
            trainer.check_finite("quantisation-aware loss", float(loss.detach()))
            loss.backward()
            grad_norm = trainer.optimizer_step(params)
            trainer.end_step({"loss": float(loss.detach())}, grad_norm=grad_norm)
    finally:
        trainer.close_bar()
    for module in quant_modules(transformer).values():
        module.merge_qat()
    saved = read_recipe(cfg.recipe)
    saved.keep = list(recipe.keep)  # the layers mixed precision kept (keep_worst), as the model trained
    out_dir = Path(cfg.output_dir)
    final = out_dir / "final"
    with atomic_dir(final, what=f"the quantised model folder {final}") as tmp:
        save_quant_folder(student, saved, report, tmp, source=f"{cfg.model.teacher} + qat")
        carry_generation_settings(model_dir, tmp)
    curves = history_curves(trainer.whole_history, ("loss",), alpha=0.8)
    plot_panels(
        out_dir / "curves.png",
        [Panel(f"QAT {recipe.name}: velocity MSE to the full-precision model", curves, log_y=True)],
    )
    result = TrainResult(
        kind="full",
        final=final,
        steps=trainer.step,
        base_model=str(model_dir.resolve()),
        extra={"recipe": saved.name, "student": student},
    )
    return trainer.finish(result)


def main(argv: list[str] | None = None) -> int:
    about = "Quantisation-aware recovery: a LoRA trained through a low-precision recipe's fake quantisation."
    return stage_main(QATConfig, train, argv, "qat", about, "quantised model folder")


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
