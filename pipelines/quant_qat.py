"""Stage 4d — quantisation-aware recovery: a LoRA trained through a low-precision recipe's fake quantisation.

    vidpost qat --config configs/shapes/qat-w4a4.yaml [dotted.overrides=...] [--resume latest]
    vidpost quant-eval --model shapes --recipes configs/quant/w4a4-int4.yaml runs/shapes-qat-w4a4/final

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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from vidpost.config import NonNegativeFloat, PositiveInt
from vidpost.models import load, resolve_model_path
from vidpost.models.quant import install_quant, quant_modules, read_recipe, save_quant_folder
from vidpost.models.sampling import flow_sigmas
from vidpost.outputs import atomic_dir
from vidpost.pipelines.distill import (
    DistillDataConfig,
    carry_generation_settings,
    copy_adapter,
    distill_batch,
    distill_loss,
    step_generator,
)
from vidpost.pipelines.quantize import calibrate_recipe, resolve_keep_worst
from vidpost.rl.prompts import load_prompt_pool
from vidpost.training.checkpoint import Checkpoints
from vidpost.training.config import DTYPES, CheckpointConfig, LogConfig, OptimConfig
from vidpost.training.optim import make_optimizer, make_scheduler
from vidpost.training.plots import Panel, history_curves, plot_panels
from vidpost.training.recovery import velocity_probe
from vidpost.training.runner import TrainResult, one_run_per_output, stage_main
from vidpost.training.sampling import video_size_and_shift
from vidpost.training.tracking import make_accelerator, read_history, start_trackers, write_config, write_history


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
    out_dir = Path(cfg.output_dir)
    accelerator = make_accelerator(out_dir, cfg.log)
    if accelerator.num_processes > 1:
        raise ValueError("vidpost qat runs in one process (launch it without accelerate's multi-process mode)")
    torch.manual_seed(cfg.train.seed)
    recipe = read_recipe(cfg.recipe)
    recipe.backend = "reference"  # trained through the exact fake quantisation; the saved recipe keeps its backend
    model_dir = resolve_model_path(cfg.model.teacher)
    teacher = load(model_dir, dtype=DTYPES[cfg.model.dtype], device=accelerator.device)
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
    write_config(out_dir, cfg)

    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.train.max_steps)
    pool = load_prompt_pool(cfg.data.prompts, cfg.data.pool_size)
    null = teacher.encode_prompt([""])
    probe_latents = torch.randn((1, *shape[1:]), generator=step_generator(cfg.train.seed, -1))
    probe = velocity_probe(student, probe_latents.to(teacher.device), teacher.encode_prompt(pool[:1]))
    ckpt = Checkpoints(out_dir, cfg, transformer, optimizer, scheduler, probe=probe)
    step = ckpt.resume(resume)
    start_trackers(accelerator, cfg.log, "qat", cfg)
    history = read_history(out_dir, step)
    bar = tqdm(total=cfg.train.max_steps, initial=step, desc=f"qat {recipe.name}")
    try:
        while step < cfg.train.max_steps:
            t0 = time.perf_counter()
            x, sig, embeds = distill_batch(teacher, pool, null, cfg, shape, sigmas, step)
            with torch.no_grad():
                v_t = teacher.predict_velocity(x, sig, embeds)
            v_s = student.predict_velocity(x, sig, embeds)
            loss, _ = distill_loss(v_s, v_t, {}, {}, 0.0)
            ckpt.check_finite("quantisation-aware loss", float(loss.detach()), step + 1)
            loss.backward()
            grad_norm = None
            if cfg.optim.max_grad_norm:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            ckpt.check_step(step, grad_norm=grad_norm)
            rec = {"loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0], "time": time.perf_counter() - t0}
            if grad_norm is not None:
                rec["grad_norm"] = grad_norm
            history.append({"step": step, **rec})
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.5f}")
            if step % cfg.log.every == 0 or step == cfg.train.max_steps:
                accelerator.log({f"train/{k}": v for k, v in rec.items()}, step=step)
            if ckpt.due(step):
                ckpt.save(step)
                write_history(out_dir, history)
    finally:
        bar.close()
    for module in quant_modules(transformer).values():
        module.merge_qat()
    saved = read_recipe(cfg.recipe)
    saved.keep = list(recipe.keep)  # the layers mixed precision kept (keep_worst), as the model trained
    final = out_dir / "final"
    with atomic_dir(final, what=f"the quantised model folder {final}") as tmp:
        save_quant_folder(student, saved, report, tmp, source=f"{cfg.model.teacher} + qat")
        carry_generation_settings(model_dir, tmp)
    write_history(out_dir, history)
    curves = history_curves(history, ("loss",), alpha=0.8)
    plot_panels(
        out_dir / "curves.png",
        [Panel(f"QAT {recipe.name}: velocity MSE to the full-precision model", curves, log_y=True)],
    )
    accelerator.end_training()
    result = TrainResult(
        kind="full",
        final=final,
        steps=step,
        history=history,
        base_model=str(model_dir.resolve()),
        extra={"recipe": saved.name, "student": student},
    )
    result.write(out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    about = "Quantisation-aware recovery: a LoRA trained through a low-precision recipe's fake quantisation."
    return stage_main(QATConfig, train, argv, "qat", about, "quantised model folder")


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
