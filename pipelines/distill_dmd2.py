"""Stage 4c — few-step distillation by DMD2: a CFG-free, N-step student of a flow-matching video model.

    vidpost distill --method dmd2 --config configs/shapes/dmd2.yaml [dotted.overrides=...] [--resume latest]

Three networks (the maths: `vidpost.training.dmd`):
- teacher  — the frozen model (`model.teacher`, optionally with a LoRA `model.lora` fused in: distil the RL model),
             queried with CFG (`dmd.guidance_scale`): the real score;
- generator — the student, initialised as a copy of the teacher's transformer, sampling with `generator.steps` Euler
             steps on its own schedule (`generator.schedule`, `generator.shift`) and no CFG; with
             `generator.train_steps` (e.g. [1, 2, 4]) each batch's backward simulation runs one of those step counts,
             drawn per batch, so one student serves each of them;
- fake score — a second copy of the teacher's transformer, trained online on the generator's outputs.
Both trained networks are the full transformer or a LoRA on it (`lora.enabled`).

One training step (everything random is drawn from generators seeded by (seed, step, process), so a resumed run
equals an uninterrupted one):
  1. `fake_score.updates` times: `train.batch_size` prompts from the pool; generator outputs x0 = x̂0_k from
     backward-simulated states x_k (k uniform per sample, no gradient); σ from the shifted uniform density on
     [`dmd.t_min`, `dmd.t_max`], x_t = (1 − σ)·x0 + σ·ε; loss = mean((v_fake(x_t, σ, c) − (ε − x0))²) (+ the GAN
     head's loss, weight `gan.head_weight`, with real latents from `gan.real_data`); AdamW step on the fake score (lr
     `optim.lr`·`fake_score.lr_scale`) and the head.
  2. one generator update: new prompts; x0 = x̂0_k of the generator at a backward-simulated state (with gradient);
     the DMD gradient g = (x̂0_fake − x̂0_real)/mean|x0 − x̂0_real| at a re-noising of x0; loss = ½·mean((x0 −
     sg(x0 − g))²) (+ `gan.weight`·softplus(−D(fake))); gradient clipping, AdamW step on the generator, lr schedule.

Sources: DMD (Yin et al., CVPR 2024, arXiv 2311.18828) and DMD2 (Yin et al., NeurIPS 2024, arXiv 2405.14867):
two-time-scale fake-score updates, no regression loss, backward simulation for multi-step generators, optional GAN
head on the fake score's features. Departures: (a) the generator's steps are deterministic Euler steps (x_{k+1} is
x̂0_k re-noised with the noise its own velocity implies) rather than re-noising with fresh noise, so the student runs
in any flow-matching Euler sampler, stock diffusers' included; (b) the GAN head reads one transformer block's token
average (DMD2: a classifier on the UNet bottleneck); (c) the real and fake scores are velocities converted to x̂0.

Output: checkpoints (`checkpoints/step_N`: generator, fake score and head weights, optimizer, scheduler, RNG;
`--resume latest`), `history.json`, tensorboard logs, `curves.png`, `samples/step_N.png` (the student on fixed
prompts), and `final/`: the student as a complete diffusers model folder whose `vidpost.json` says how to sample
it (`generation.steps`, `default_guidance_scale` 1, `default_shift`, `schedule`), so `vidpost generate --model
final` samples it in `generator.steps` steps without CFG and stock diffusers loads it.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from vidpost.evaluation.prompts import load_prompt_pool
from vidpost.models.base import PromptEmbeds
from vidpost.models.sampling import initial_noise
from vidpost.pipelines.distill_dmd2_config import (  # noqa: F401 (re-exported: the stage's config)
    DMD2Config,
    DMD2DataConfig,
    DMD2LogConfig,
    DMD2ModelConfig,
    DMD2TrainConfig,
    DMDLossConfig,
    FakeScoreConfig,
    GanConfig,
    GeneratorConfig,
)
from vidpost.seeding import step_generator
from vidpost.training.dmd import (
    FeatureTap,
    GanHead,
    dmd_gradient,
    dmd_loss,
    fake_score_loss,
    gan_generator_loss,
    gan_head_loss,
    sample_sigmas,
    x0_from_velocity,
)
from vidpost.training.dmd2 import (
    RealLatents,
    Trainables,
    generator_output,
    generator_sigmas,
    generator_states,
    load_teacher,
    pick_schedule,
    save_student,
    trainable_copy,
    training_schedules,
    write_samples,
)
from vidpost.training.flow import renoise
from vidpost.training.loop import Trainer
from vidpost.training.parallel import (
    all_reduce_grads,
    check_replicas,
    check_tokens,
    enable_sequence_parallel,
)
from vidpost.training.plots import Panel, history_curves, plot_panels
from vidpost.training.recovery import velocity_probe
from vidpost.training.runner import TrainResult, one_run_per_output, stage_main
from vidpost.training.sampling import video_size_and_shift

# ---- the loop -----------------------------------------------------------------------------------------------------


@one_run_per_output
def train(cfg: DMD2Config, resume: str | None = None) -> TrainResult:
    trainer = Trainer("distill-dmd2", cfg, mixed_precision=cfg.train.mixed_precision)
    accelerator, layout, main, out_dir = trainer.accelerator, trainer.layout, trainer.main, trainer.out_dir
    rank, sp = layout.dp_rank, layout.degree > 1  # the ranks of one SP group draw the same batch
    if sp and cfg.gan.weight > 0:
        raise ValueError(
            "gan.weight > 0 with parallel.sp_degree > 1: the GAN head reads one block's features, which "
            "sequence parallelism splits over the ranks; set gan.weight=0 or sp_degree=1"
        )
    teacher, model_dir = load_teacher(cfg.model, accelerator.device)
    d = cfg.data
    size, dmd_shift = video_size_and_shift(
        teacher,
        model_dir,
        SimpleNamespace(num_frames=d.num_frames, height=d.height, width=d.width, shift=cfg.dmd.shift),
    )
    shape = teacher.latent_shape(cfg.train.batch_size, *size)
    sigmas = generator_sigmas(teacher, cfg.generator)  # the saved default: samples and the student folder
    schedules = training_schedules(teacher, cfg.generator)
    targets = list(cfg.lora.target_modules or teacher.lora_target_modules)
    generator = trainable_copy(teacher.transformer, cfg.lora, targets)
    fake = trainable_copy(teacher.transformer, cfg.lora, targets)
    if cfg.model.gradient_checkpointing:
        generator.enable_gradient_checkpointing()
        fake.enable_gradient_checkpointing()
    head, tap, real = None, None, None
    if cfg.gan.weight > 0:
        blocks = getattr(fake, "blocks", None) or fake.transformer_blocks
        layer = cfg.gan.layer if cfg.gan.layer is not None else len(blocks) // 2
        if not 0 <= layer < len(blocks):
            raise ValueError(f"gan.layer {layer} is not a block of the transformer (it has {len(blocks)})")
        head = GanHead(fake.config.num_attention_heads * fake.config.attention_head_dim).to(accelerator.device)
        tap = FeatureTap(blocks[layer])
        real = RealLatents(cfg.gan.real_data, shape)
    nets = Trainables(generator, fake, head)
    check_tokens(teacher, shape, layout)
    enable_sequence_parallel(teacher, layout, extra=(generator, fake))

    groups = nets.groups()
    scale = cfg.fake_score.lr_scale
    param_groups = [
        {
            "params": ps,
            "lr": cfg.optim.lr * (1.0 if k == "generator" else scale),
            "lr_scale": 1.0 if k == "generator" else scale,
        }
        for k, ps in groups.items()
    ]
    optimizer = trainer.optimize(param_groups)
    pool = load_prompt_pool(cfg.data.prompts, cfg.data.pool_size)
    null = teacher.encode_prompt([""])
    probe_latents = torch.randn((1, *shape[1:]), generator=torch.Generator().manual_seed(cfg.train.seed))
    probe = velocity_probe(teacher, probe_latents.to(teacher.device), teacher.encode_prompt(pool[:1]), model=generator)
    trainer.begin(resume, model=nets, probe=probe, desc="distill dmd2")
    sample_prompts = load_prompt_pool(cfg.data.sample_prompts, cfg.log.sample_count)[: cfg.log.sample_count]
    sample_noise = initial_noise((len(sample_prompts), *shape[1:]), seed=cfg.train.seed + 7).to(teacher.device)

    def batch_prompts(rng: torch.Generator) -> PromptEmbeds:
        idx = torch.randint(len(pool), (cfg.train.batch_size,), generator=rng).tolist()
        return teacher.encode_prompt([pool[i] for i in idx])

    def gan_logits(x_t: torch.Tensor, sigma: torch.Tensor, cond: PromptEmbeds) -> torch.Tensor:
        teacher.predict_velocity(x_t, sigma, cond, model=fake)
        return head(tap.pop())

    def step_params(names: tuple[str, ...]) -> list[torch.nn.Parameter]:
        return [p for k in names if k in groups for p in groups[k]]

    def clip_and_step(names: tuple[str, ...], drop: tuple[str, ...] = ()) -> float | None:
        for p in step_params(drop):
            p.grad = None
        params = step_params(names)
        all_reduce_grads(params, accelerator, layout.dp_size)
        norm = None
        if cfg.optim.max_grad_norm:
            norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def fake_update(step: int, j: int, rec: dict[str, float]) -> tuple[float, float | None]:
        """Fake-score update j of `step` (+ the GAN head's) → (its loss, the GAN head's loss or None)."""
        rng = step_generator(cfg.train.seed, step, rank, j)
        cond = batch_prompts(rng)
        x_k, s_k = generator_states(teacher, generator, cond, pick_schedule(schedules, rng), shape, rng)
        with torch.no_grad():
            x0 = generator_output(teacher, generator, x_k, s_k, cond)
        sigma = sample_sigmas(shape[0], cfg.dmd.t_min, cfg.dmd.t_max, dmd_shift, rng).to(x0.device)
        noise = torch.randn(x0.shape, generator=rng).to(x0.device)
        v_fake = teacher.predict_velocity(renoise(x0, noise, sigma), sigma, cond, model=fake)
        loss = fake_score_loss(v_fake, x0, noise)
        h_value = None
        if head is not None:
            logit_fake = head(tap.pop())
            lat, emb = real.batch(shape[0], rng, x0.device)
            s_r = sample_sigmas(shape[0], cfg.dmd.t_min, cfg.dmd.t_max, dmd_shift, rng).to(x0.device)
            x_r = renoise(lat, torch.randn(lat.shape, generator=rng).to(x0.device), s_r)
            h_loss = gan_head_loss(gan_logits(x_r, s_r, emb), logit_fake)
            h_value = float(h_loss.detach())
            loss = loss + cfg.gan.head_weight * h_loss
        trainer.check_finite("fake-score loss", float(loss.detach()))
        loss.backward()
        norm = clip_and_step(("fake_score", "head"))
        if norm is not None:
            rec["grad_norm_fake"] = norm
        return float(loss.detach()), h_value

    def generator_update(step: int, rec: dict[str, float]) -> tuple[float, float | None]:
        """The generator's DMD (+ GAN) update of `step` → (its loss, its gradient norm)."""
        rng = step_generator(cfg.train.seed, step, rank, cfg.fake_score.updates)
        cond = batch_prompts(rng)
        uncond = null.repeat_interleave(shape[0])
        x_k, s_k = generator_states(teacher, generator, cond, pick_schedule(schedules, rng), shape, rng)
        x0 = generator_output(teacher, generator, x_k, s_k, cond)
        sigma = sample_sigmas(shape[0], cfg.dmd.t_min, cfg.dmd.t_max, dmd_shift, rng).to(x0.device)
        noise = torch.randn(x0.shape, generator=rng).to(x0.device)
        x_t = renoise(x0.detach(), noise, sigma)
        with torch.no_grad():
            v_real = teacher.predict_velocity(x_t, sigma, cond, uncond, cfg.dmd.guidance_scale)
            v_fake = teacher.predict_velocity(x_t, sigma, cond, model=fake)
            if tap is not None:
                tap.pop()
        grad = dmd_gradient(x0, x0_from_velocity(x_t, sigma, v_real), x0_from_velocity(x_t, sigma, v_fake))
        loss = dmd_loss(x0, grad)
        rec["loss_dmd"] = float(loss.detach())
        rec["dmd_grad_rms"] = float(grad.pow(2).mean().sqrt())
        if head is not None:
            g_loss = gan_generator_loss(gan_logits(renoise(x0, noise, sigma), sigma, cond))
            rec["loss_gan_generator"] = float(g_loss.detach())
            loss = loss + cfg.gan.weight * g_loss
        trainer.check_finite("generator loss", float(loss.detach()))
        loss.backward()
        return float(loss.detach()), clip_and_step(("generator",), drop=("fake_score", "head"))

    try:
        while trainer.running:
            step = trainer.step
            rec: dict[str, float] = {}
            with accelerator.autocast():
                # 1. the fake score (and the GAN head) on the current generator's outputs, `updates` times
                parts = [fake_update(step, j, rec) for j in range(cfg.fake_score.updates)]
                # 2. the generator: distribution matching at a re-noising of its output
                loss, norm = generator_update(step, rec)
            rec["loss_fake"] = sum(f for f, _ in parts) / len(parts)
            if parts[0][1] is not None:
                rec["loss_gan_head"] = sum(h for _, h in parts) / len(parts)
            trainer.scheduler.step()
            rec["loss"] = loss
            shown = {"dmd": f"{rec['loss_dmd']:.2e}", "fake": f"{rec['loss_fake']:.4f}"}
            trainer.end_step(rec, grad_norm=norm, postfix=shown)
            if (main or sp) and trainer.due(cfg.log.sample_every):
                write_samples(teacher, generator, sample_prompts, sigmas, sample_noise, out_dir, trainer.step, main)
    finally:
        if tap is not None:
            tap.remove()
        trainer.close_bar()
    check_replicas(nets, accelerator)
    final = None
    if main or sp:  # under SP every rank samples (the transformer's collectives need them all), one writes
        write_samples(teacher, generator, sample_prompts, sigmas, sample_noise, out_dir, trainer.step, main)
    if main:
        final = save_student(teacher, generator, model_dir, cfg, out_dir / "final")
        history = trainer.whole_history
        keys = [
            k for k in ("loss_dmd", "loss_fake", "loss_gan_head", "loss_gan_generator") if history and k in history[-1]
        ]
        curves = history_curves(history, tuple(keys), alpha=0.8)
        plot_panels(out_dir / "curves.png", [Panel("DMD2", curves, log_y=True)], panel_size=(6, 3.5))
    result = TrainResult(
        kind="full",
        final=final,
        steps=trainer.step,
        base_model=str(model_dir.resolve()),
        extra={"generator": generator, "fake_score": fake, "steps": cfg.generator.steps},
    )
    return trainer.finish(result)


# ---- command line -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from vidpost.pipelines.distill import METHODS

    about = "DMD2 few-step distillation (--method dmd2; --method lit: LiT linear-attention distillation)."
    return stage_main(DMD2Config, train, argv, "distill", about, "student", preset="dmd2", methods=(METHODS, "dmd2"))


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
