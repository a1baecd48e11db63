"""Stage 1 — supervised fine-tuning of a video DiT with the flow-matching objective (LoRA or full).

    vidpost sft --config configs/shapes/sft.yaml [dotted.overrides=...] [--resume latest]
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m vidpost.pipelines.sft --config ...

Algorithm (one optimizer step):
  for each of `grad_accum` micro-batches (b clips per process; the global batch is b · processes · grad_accum):
    x0      ← cached VAE latents (normalised by the adapter), c ← cached text embeddings;
              with probability `caption_dropout` c is replaced by the empty-prompt embedding (enables CFG)
    u       ← uniform(0, 1)  or  sigmoid(N(logit_mean, logit_std))            ("timestep_sampling")
    σ       ← shift·u / (1 + (shift − 1)·u)                                    (train.shift; 1 = no shift)
    ε       ← N(0, I);  x_σ = (1 − σ)·x0 + σ·ε;  target v* = ε − x0
    loss_i  ← w(σ) · mean((v_θ(x_σ, σ, c) − v*)²),  w = 1, or SD3's cosmap 2 / (π(1 − 2σ + 2σ²))
    backward(mean_i loss_i / grad_accum)
  clip the gradient norm to `max_grad_norm`; AdamW (or 8-bit AdamW) step; warm-up then constant/linear/cosine lr;
  EMA of the trainable weights when `ema_decay` > 0.

Determinism: the data order, caption dropout, u and ε of step s are drawn from one generator seeded by (seed, s)
for the step's *global* batch ([grad_accum][processes][b]) and each (micro-batch, process) takes its slice. Hence
a resumed run reproduces an uninterrupted one, N processes with batch b match one process with batch N·b, and
grad_accum k with batch b matches grad_accum 1 with batch k·b (tests/test_sft.py checks all three).

Checkpoints (every `checkpoint.every` steps, atomically: written to `step_N.tmp/` then renamed) hold the
trainable weights (safetensors), optimizer, lr scheduler, sampler position, EMA and RNG states; `--resume latest`
continues from the newest complete one. A non-finite loss stops the run with exit code 3, keeping the last good
checkpoint. At the end, `final/` holds a diffusers-format LoRA (`pytorch_lora_weights.safetensors`, loadable by
stock `WanPipeline.load_lora_weights`) or, for full fine-tuning, a complete diffusers model directory.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from vidpost.config import Fraction, PositiveFloat, PositiveInt
from vidpost.evaluation.validation import ValidationConfig, run_validation
from vidpost.media.data import Bucket, LatentCache, StatefulBatchSampler, precompute, read_manifest
from vidpost.models import VideoModelAdapter, load, resolve_model_path
from vidpost.models.base import DTYPES, PromptEmbeds, upcast_trainable
from vidpost.sections import CheckpointConfig, LogConfig, LoraConfig, OptimConfig
from vidpost.seeding import step_generator
from vidpost.training.ema import EMA
from vidpost.training.flow import flow_matching_loss, given_frames, loss_weight, renoise, sample_sigmas
from vidpost.training.loop import Trainer
from vidpost.training.lora import add_lora, export
from vidpost.training.parallel import ParallelConfig, check_tokens, enable_sequence_parallel
from vidpost.training.recovery import velocity_probe
from vidpost.training.runner import TrainResult, one_run_per_output, stage_main

# ---- configuration ----------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    path: str = "shapes-base"
    """diffusers-format model directory or preset name to fine-tune"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """storage dtype of the frozen weights (trainable weights stay float32)"""
    gradient_checkpointing: bool = False
    """recompute transformer blocks in the backward pass to save activation memory"""


@dataclass
class DataConfig:
    manifest: str = ""
    """JSONL/CSV manifest of {video, caption, ...}; relative video paths resolve against its folder"""
    caption_key: str = "caption"
    """manifest column used as the caption"""
    cache_dir: str = ""
    """latent cache folder; empty = <output_dir>/cache. Filled by `vidpost sft precompute` (or on first run)"""
    buckets: list[list[int]] = field(default_factory=lambda: [[17, 64, 64]])
    """[num_frames, height, width] buckets; each clip goes to the closest aspect it can fill"""
    shard_size: PositiveInt = 256
    """clips per latent-cache shard"""
    caption_dropout: float = 0.1
    """probability of training on the empty prompt instead of the caption (for classifier-free guidance)"""

    def __post_init__(self) -> None:
        for b in self.buckets:
            if len(b) != 3:
                raise ValueError(f"data.buckets entries must be [num_frames, height, width], got {b}")


@dataclass
class TrainConfig:
    max_steps: PositiveInt = 1000
    batch_size: PositiveInt = 4
    """clips per process per micro-batch"""
    grad_accum: PositiveInt = 1
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    timestep_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: PositiveFloat = 1.0
    """shift applied to the sampled timestep (σ = shift·u / (1 + (shift − 1)·u))"""
    loss_weighting: Literal["none", "cosmap"] = "none"
    ema_decay: Fraction = 0.0
    """EMA of the trainable weights (0 disables); the EMA weights are exported when enabled"""
    given_frame_share: float = 0.0
    """share of clips trained with latent frame `given_frame` given clean at timestep 0 and left out of the loss
    (Wan2.2 TI2V's first-frame conditioning, for any frame; what `sample(keyframe=given_frame)` needs)"""
    given_frame: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.given_frame_share <= 1.0:
            raise ValueError(f"train.given_frame_share must be in [0, 1], got {self.given_frame_share}")


@dataclass
class SFTConfig:
    output_dir: str = "runs/sft"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    log: LogConfig = field(default_factory=LogConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """sequence parallelism (`vidpost.training.parallel`): processes = data-parallel × sp_degree × ring_degree"""


# ---- the loop -----------------------------------------------------------------------------------------------------


def batch_embeds(cache: LatentCache, idx: list[int], drop: torch.Tensor) -> PromptEmbeds:
    def pick(values, null):
        if values[idx[0]] is None:
            return None
        return torch.stack([null if d else values[i] for i, d in zip(idx, drop.tolist())])

    return PromptEmbeds(
        embeds=pick(cache.embeds, cache.null_embeds),
        mask=pick(cache.masks, cache.null_mask),
        pooled=pick(cache.pooled, cache.null_pooled),
    )


def check_data(cfg: SFTConfig) -> None:
    """Before loading the model: a run without a latent cache needs a manifest that exists (the message names the
    command that makes one)."""
    cache_dir = Path(cfg.data.cache_dir or Path(cfg.output_dir) / "cache")
    if (cache_dir / "summary.json").exists():
        return
    if not cfg.data.manifest:
        raise ValueError(f"data.manifest is empty and no latent cache exists at {cache_dir}")
    manifest = Path(cfg.data.manifest)
    if not manifest.exists():
        raise ValueError(
            f"data.manifest {manifest} does not exist: make the Shapes clips with `vidpost shapes export --out "
            f"{manifest.parent} --split train --n 4000` (or `vidpost shapes models --stage data`), or set "
            "data.manifest=<your JSONL/CSV of video,caption>"
        )


def ensure_cache(cfg: SFTConfig, adapter: VideoModelAdapter, accelerator: Any) -> Path:
    cache_dir = Path(cfg.data.cache_dir or Path(cfg.output_dir) / "cache")
    if accelerator.is_main_process and not (cache_dir / "summary.json").exists():
        if not cfg.data.manifest:
            raise ValueError("data.manifest is empty and no latent cache exists at " + str(cache_dir))
        rows = read_manifest(cfg.data.manifest, cfg.data.caption_key)
        summary = precompute(adapter, rows, buckets_of(cfg), cache_dir, shard_size=cfg.data.shard_size)
        print(f"latent cache: {summary}", file=sys.stderr)
    accelerator.wait_for_everyone()
    return cache_dir


def buckets_of(cfg: SFTConfig) -> list[Bucket]:
    return [Bucket(*b) for b in cfg.data.buckets]


@one_run_per_output
def train(cfg: SFTConfig, resume: str | None = None) -> TrainResult:
    trainer = Trainer("sft", cfg, mixed_precision=cfg.train.mixed_precision)
    accelerator, layout, device = trainer.accelerator, trainer.layout, trainer.device
    rank, dp = layout.dp_rank, layout.dp_size  # the data follow the data-parallel coordinate (SP ranks share it)
    check_data(cfg)
    model_dir = resolve_model_path(cfg.model.path)
    adapter = load(model_dir, dtype=DTYPES[cfg.model.dtype], device=device)
    for b in buckets_of(cfg):
        adapter.validate_size(b.num_frames, b.height, b.width)
        check_tokens(adapter, adapter.latent_shape(1, b.num_frames, b.height, b.width), layout)
    cache = LatentCache(ensure_cache(cfg, adapter, accelerator))

    transformer = adapter.transformer
    if cfg.lora.enabled:
        add_lora(adapter, cfg.lora)
    else:
        transformer.requires_grad_(True)
    params = upcast_trainable(transformer)
    if cfg.model.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    enable_sequence_parallel(adapter, layout)
    trainer.optimize(params)
    model = trainer.prepare(transformer)
    global_batch = cfg.train.batch_size * dp * cfg.train.grad_accum
    sampler = StatefulBatchSampler(cache.bucket_indices(), global_batch, cfg.train.seed)
    ema = EMA(transformer, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    # the checkpoint probe: the first cached clip and its caption at three noise levels
    first = batch_embeds(cache, [0], torch.zeros(1, dtype=torch.bool)).to(device)
    probe = velocity_probe(adapter, cache.latents[0][None].to(device), first, autocast=accelerator.autocast)
    trainer.begin(resume, model=accelerator.unwrap_model(model), data=sampler, kept=ema, probe=probe)

    batches = iter(sampler)
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    while trainer.running:
        # The step's global batch is [grad_accum][data-parallel ranks][batch_size]; everything random is drawn for
        # all of it from one generator, and each (micro-batch, data-parallel rank) takes its slice.
        g = step_generator(cfg.train.seed, trainer.step, 0)
        global_idx = next(batches)
        n = len(global_idx)
        drop = torch.rand(n, generator=g) < cfg.data.caption_dropout
        sigma = sample_sigmas(n, g, cfg.train)
        noise = torch.randn((n, *cache.latents[global_idx[0]].shape), generator=g)
        keyed = given_frames(g, n, noise.shape[2], cfg.train)
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            sl = slice((micro * dp + rank) * bs, (micro * dp + rank + 1) * bs)
            idx = global_idx[sl]
            x0 = torch.stack([cache.latents[i] for i in idx]).to(device)
            eps, sig = noise[sl].to(device), sigma[sl].to(device)
            cond = batch_embeds(cache, idx, drop[sl]).to(device)
            x_t = renoise(x0, eps, sig)
            k = None if keyed is None else keyed[sl].to(device)
            if k is not None:  # the given latent frames are clean
                x_t = torch.where(k[:, None, :, None, None], x0, x_t)
            sync = micro == accum - 1
            ctx = accelerator.no_sync(model) if (not sync and trainer.accelerator.num_processes > 1) else nullcontext()
            with ctx, accelerator.autocast():
                pred = adapter.predict_velocity(x_t, sig, cond, model=model, given=k)
                w = loss_weight(sig, cfg.train.loss_weighting)
                loss = flow_matching_loss(pred, x0, eps, w, given=k).mean()
                accelerator.backward(loss * layout.grad_scale / accum)
            loss_sum += loss.detach().float() / accum
        mean_loss = accelerator.reduce(loss_sum, reduction="mean").item()
        trainer.check_finite("loss", mean_loss)
        grad_norm = trainer.optimizer_step(params, ema=ema, model=accelerator.unwrap_model(model))
        trainer.end_step({"loss": mean_loss}, grad_norm=grad_norm)
        if trainer.due(cfg.validation.every) and trainer.running:
            validate(trainer, adapter, cfg)
    trainer.close_bar()
    accelerator.wait_for_everyone()
    result = TrainResult(
        kind="lora" if cfg.lora.enabled else "full",
        final=None,
        steps=trainer.step,
        base_model=str(model_dir.resolve()),
    )
    if trainer.main:
        result.final = export(adapter, cfg, Path(cfg.output_dir) / "final", ema)
    if cfg.validation.prompts:
        result.metrics = validate(trainer, adapter, cfg, wait=False)
    return trainer.finish(result)


def validate(trainer: Trainer, adapter: VideoModelAdapter, cfg: SFTConfig, wait: bool = True) -> dict[str, float]:
    """The validation samples of the step just taken (every rank of an SP group samples, the main process writes),
    logged as `val/*`."""
    metrics: dict[str, float] = {}
    if trainer.main or trainer.layout.degree > 1:
        b, out_dir = buckets_of(cfg)[0], Path(cfg.output_dir)
        size = (b.num_frames, b.height, b.width)
        metrics = run_validation(adapter, cfg.validation, size, out_dir, trainer.step, trainer.main)
        trainer.log_metrics(metrics, "val")
    if wait:
        trainer.accelerator.wait_for_everyone()
    return metrics


# ---- command line -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    return stage_main(SFTConfig, train, argv, "sft", "Flow-matching SFT (LoRA or full).", "weights")


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
