"""DMD2 few-step distillation (`vidpost distill --method dmd2`): the losses on hand-worked numbers, backward simulation
= the student's sampler, every trainable parameter moves, resume = uninterrupted, and the student is a normal model
folder (its sampling defaults saved, loaded by stock diffusers, reproduced by stock WanPipeline on its schedule)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vidpost.config import load_config
from vidpost.models import load
from vidpost.models.sampling import flow_sigmas, initial_noise, sample
from vidpost.pipelines.distill_dmd2 import DMD2Config, train
from vidpost.training.dmd import (
    GanHead,
    dmd_gradient,
    dmd_loss,
    fake_score_loss,
    gan_generator_loss,
    gan_head_loss,
    sample_sigmas,
    x0_from_velocity,
)
from vidpost.training.dmd2 import generator_sigmas, generator_states, pick_schedule, sample_student, training_schedules
from vidpost.training.flow import renoise

PROMPTS = ["a red circle moves right", "a blue square", "a green dot", "red"]


# ---- the maths ----------------------------------------------------------------------------------------------------


def test_dmd_gradient_and_loss_on_hand_worked_numbers():
    """x0 = (1, 2), x̂0_real = (0, 0), x̂0_fake = (2, 4): the normaliser is mean|x0 − x̂0_real| = 1.5, so
    g = (2, 4)/1.5 = (4/3, 8/3); the loss is ½·mean(g²) = ½·(16/9 + 64/9)/2 = 20/9 and its gradient g/2."""
    x0 = torch.tensor([[1.0, 2.0]], requires_grad=True)
    g = dmd_gradient(x0, torch.zeros(1, 2), torch.tensor([[2.0, 4.0]]))
    torch.testing.assert_close(g, torch.tensor([[4 / 3, 8 / 3]]))
    loss = dmd_loss(x0, g)
    assert loss.item() == pytest.approx(20 / 9)
    loss.backward()
    torch.testing.assert_close(x0.grad, torch.tensor([[2 / 3, 4 / 3]]))
    # per-sample normalisers; equal scores give no gradient; a descent step moves x0 towards the real estimate
    two = dmd_gradient(torch.tensor([[1.0, 1.0], [0.0, 4.0]]), torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [2.0, 2]]))
    torch.testing.assert_close(two, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert dmd_gradient(x0, torch.ones(1, 2), torch.ones(1, 2)).abs().sum() == 0
    real, fake = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 3.0]])
    step = x0.detach() - 0.1 * dmd_gradient(x0, real, fake)
    assert (step - real).norm() < (x0.detach() - real).norm()


def test_fake_score_loss_conversions_and_gan_losses_on_hand_worked_numbers():
    # flow matching on the generator's output: target ε − x0 = (1, −1); v = (1, 1) → mean((0, 2)²) = 2
    assert fake_score_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])) == 2.0
    # x_σ = (1 − σ)x0 + σε with v = ε − x0 gives back x0, per-sample σ
    x0, eps, sigma = torch.randn(3, 2, 4), torch.randn(3, 2, 4), torch.tensor([0.1, 0.5, 0.9])
    x = renoise(x0, eps, sigma)
    torch.testing.assert_close(x[1], 0.5 * x0[1] + 0.5 * eps[1])
    torch.testing.assert_close(x0_from_velocity(x, sigma, eps - x0), x0)
    # non-saturating GAN: softplus(0) = ln 2 for each term
    zero = torch.zeros(4)
    assert gan_head_loss(zero, zero).item() == pytest.approx(2 * 0.693147, rel=1e-5)
    assert gan_generator_loss(torch.tensor([0.0, 2.0])).item() == pytest.approx((0.693147 + 0.126928) / 2, rel=1e-5)
    assert GanHead(8)(torch.randn(2, 5, 8)).shape == (2,)


def test_renoising_levels_follow_the_shifted_uniform_range():
    s = sample_sigmas(20_000, 0.02, 0.98, 3.0, torch.Generator().manual_seed(0))
    lo, hi = 3 * 0.02 / (1 + 2 * 0.02), 3 * 0.98 / (1 + 2 * 0.98)
    assert lo <= s.min().item() and s.max().item() <= hi
    assert s.median().item() == pytest.approx(3 * 0.5 / (1 + 2 * 0.5), abs=0.01)  # the shift maps medians


# ---- the student's sampler ------------------------------------------------------------------------------------------


def test_backward_simulation_states_are_the_students_own_sampler_states(tiny_wan_dir):
    """Sample b's training state x_k is what the student's Euler sampler reaches after k steps from that sample's
    noise; with k = N the sampler is `vidpost.models.sampling.sample` at guidance 1 on the student's schedule."""
    teacher = load(tiny_wan_dir)
    cfg = load_config(DMD2Config, None, ["generator.steps=3"])
    sigmas = generator_sigmas(teacher, cfg.generator)
    torch.testing.assert_close(sigmas, flow_sigmas(3, teacher.default_shift, "uniform"))
    shape = teacher.latent_shape(6, 5, 32, 32)
    cond = teacher.encode_prompt(PROMPTS[:2] * 3)
    rng = torch.Generator().manual_seed(3)
    x_k, s_k = generator_states(teacher, teacher.transformer, cond, sigmas, shape, rng)
    rng = torch.Generator().manual_seed(3)
    stop = torch.randint(3, (6,), generator=rng)
    noise = initial_noise(shape, generator=rng)
    assert len(set(stop.tolist())) > 1
    for b in range(6):
        k = int(stop[b])
        want = sample_student(teacher, teacher.transformer, cond.index([b]), sigmas[: k + 1], noise[b : b + 1])
        torch.testing.assert_close(x_k[b : b + 1], want, rtol=1e-5, atol=1e-5)
        assert s_k[b] == sigmas[k]
    full = sample_student(teacher, teacher.transformer, cond.index([0]), sigmas, noise[:1])
    teacher.schedule = "uniform"
    kw = {"num_frames": 5, "height": 32, "width": 32, "num_inference_steps": 3, "guidance_scale": 1.0}
    ours = sample(
        teacher, PROMPTS[:1], **kw, shift=teacher.default_shift, seed=0, latents=noise[:1], return_latents=True
    )
    torch.testing.assert_close(full, ours, rtol=1e-5, atol=1e-5)


# ---- training -----------------------------------------------------------------------------------------------------


def _cfg(tmp_path: Path, model: Path, name: str, *extra: str) -> DMD2Config:
    overrides = [
        f"output_dir={tmp_path / name}",
        f"model.teacher={model}",
        f"data.prompts={json.dumps(PROMPTS)}",
        f"data.sample_prompts={json.dumps(PROMPTS[:1])}",
        "log.sample_count=1",
        "data.num_frames=5",
        "data.height=32",
        "data.width=32",
        "generator.steps=3",
        "dmd.guidance_scale=3.0",
        "fake_score.updates=2",
        "train.batch_size=3",
        "optim.lr=1e-3",
        "optim.max_grad_norm=0",
        "checkpoint.every=0",
        "log.tensorboard=false",
        *extra,
    ]
    return load_config(DMD2Config, None, overrides)


def test_every_trainable_parameter_moves_and_the_student_is_a_stock_diffusers_model(tmp_path, tiny_wan_dir):
    from diffusers import WanPipeline, WanTransformer3DModel

    cfg = _cfg(tmp_path, tiny_wan_dir, "run", "train.max_steps=2", "generator.schedule=diffusers")
    teacher = load(tiny_wan_dir)
    before = {n: p.detach().clone() for n, p in teacher.transformer.named_parameters()}
    result = train(cfg)
    for net in ("generator", "fake_score"):
        after = dict(result.extra[net].named_parameters())
        assert set(after) == set(before)
        still = [n for n in before if torch.equal(before[n], after[n].detach())]
        assert not still, (net, still)
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in hist] == [1, 2] and all(h["loss_dmd"] > 0 and h["loss_fake"] > 0 for h in hist)
    assert (tmp_path / "run" / "samples" / "step_0000002.png").exists() and (tmp_path / "run" / "curves.png").exists()

    final = result.final
    meta = json.loads((final / "vidpost.json").read_text())
    assert meta["default_guidance_scale"] == 1.0 and meta["generation"]["steps"] == 3
    assert meta["distilled"]["method"] == "dmd2" and "schedule" not in meta  # diffusers: the family's own
    WanTransformer3DModel.from_pretrained(final, subfolder="transformer")
    pipe = WanPipeline.from_pretrained(final)
    student = load(final)
    noise = initial_noise(student.latent_shape(1, 5, 32, 32), seed=0)
    kw = {"num_frames": 5, "height": 32, "width": 32, "num_inference_steps": 3, "guidance_scale": 1.0}
    stock = pipe(PROMPTS[0], latents=noise, output_type="pt", max_sequence_length=student.max_sequence_length, **kw)
    stock = stock.frames
    ours = sample(student, PROMPTS[0], **kw, shift=student.default_shift, seed=0, latents=noise)
    torch.testing.assert_close(stock.permute(0, 2, 1, 3, 4).float(), ours, rtol=1e-4, atol=1e-4)


def test_student_folder_sets_its_sampling_and_generate_uses_it(tmp_path, tiny_wan_dir):
    from vidpost.evaluation.settings import resolve_settings

    result = train(_cfg(tmp_path, tiny_wan_dir, "run", "train.max_steps=1", "generator.shift=5.0"))
    student = load(result.final)
    assert student.schedule == "uniform" and student.default_shift == 5.0
    s = resolve_settings(result.final, student, num_frames=5, height=32, width=32)
    assert (s.steps, s.guidance) == (3, 1.0) and not student.uses_cfg(s.guidance)


def test_resume_equals_uninterrupted(tmp_path, tiny_wan_dir):
    full = train(_cfg(tmp_path, tiny_wan_dir, "full", "train.max_steps=3", "checkpoint.every=1"))
    train(_cfg(tmp_path, tiny_wan_dir, "part", "train.max_steps=1", "checkpoint.every=1"))
    resumed = train(_cfg(tmp_path, tiny_wan_dir, "part", "train.max_steps=3", "checkpoint.every=1"), resume="latest")
    assert resumed.steps == 3
    for net in ("generator", "fake_score"):
        a, b = dict(full.extra[net].named_parameters()), dict(resumed.extra[net].named_parameters())
        for n in a:
            torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-6)
    # a result's history is its invocation's steps; history.json continues over the whole run
    whole = json.loads((tmp_path / "part" / "history.json").read_text())
    for k in ("loss_dmd", "loss_fake"):
        assert [h[k] for h in full.history[1:]] == pytest.approx([h[k] for h in resumed.history], rel=1e-5)
        assert [h[k] for h in full.history] == pytest.approx([h[k] for h in whole], rel=1e-5)


def test_lora_and_gan_head_train_and_the_lora_student_is_fused(tmp_path, tiny_wan_dir):
    """LoRA generator and fake score with the GAN head on real latents (a hand-written latent cache): the LoRA and head
    weights move, the base weights do not, and the saved student is plain dense weights (no LoRA keys)."""
    from safetensors.torch import load_file

    teacher = load(tiny_wan_dir)
    cache = tmp_path / "cache"
    cache.mkdir()
    emb = teacher.encode_prompt(PROMPTS)
    lat = torch.randn(teacher.latent_shape(4, 5, 32, 32))
    save_file({"latents": lat, "prompt_embeds": emb.embeds.float()}, str(cache / "shard_00000.safetensors"))
    items = [{"video": f"{i}.mp4", "caption": p} for i, p in enumerate(PROMPTS)]
    bucket = {"num_frames": 5, "height": 32, "width": 32}
    (cache / "shard_00000.json").write_text(json.dumps({"bucket": bucket, "items": items}))
    save_file({"prompt_embeds": teacher.encode_prompt([""]).embeds.float()}, str(cache / "null_prompt.safetensors"))
    cfg = _cfg(
        tmp_path, tiny_wan_dir, "lora", "train.max_steps=2", "lora.enabled=true", "lora.rank=4", "gan.weight=0.5",
        f"gan.real_data={cache}", "gan.layer=0",
    )  # fmt: skip
    result = train(cfg)
    gen = result.extra["generator"]
    lora = {n: p for n, p in gen.named_parameters() if "lora_B" in n}
    assert lora and all(p.abs().sum() > 0 for p in lora.values())  # B starts at zero
    base = {n: p for n, p in gen.named_parameters() if "lora" not in n}
    ref = dict(teacher.transformer.named_parameters())
    assert all(torch.equal(p, ref[n.replace(".base_layer", "")]) for n, p in base.items())
    hist = result.history
    assert all("loss_gan_head" in h and "loss_gan_generator" in h for h in hist)
    keys = load_file(str(result.final / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert not [k for k in keys if "lora" in k]
    student = load(result.final)
    x = torch.randn(teacher.latent_shape(1, 5, 32, 32))
    cond = teacher.encode_prompt(PROMPTS[:1])
    with torch.no_grad():
        torch.testing.assert_close(
            student.predict_velocity(x, 0.5, cond),
            teacher.predict_velocity(x, 0.5, cond, model=gen),
            atol=1e-4,
            rtol=1e-4,
        )


def test_a_mix_of_step_counts_draws_one_schedule_per_batch(tmp_path, tiny_wan_dir, monkeypatch):
    """generator.train_steps [1, 2, 3]: each batch's backward simulation runs one of the three schedules (nested for
    the uniform schedule), the student keeps `steps` as its default; a single count draws nothing extra, so [3] is the
    plain run, bitwise."""
    import vidpost.pipelines.distill_dmd2 as dmd2

    teacher = load(tiny_wan_dir)
    cfg = load_config(DMD2Config, None, ["generator.steps=4", "generator.train_steps=[1, 2, 4]"])
    one, two, four = training_schedules(teacher, cfg.generator)
    assert [len(s) - 1 for s in (one, two, four)] == [1, 2, 4]
    assert set(two.tolist()) <= set(four.tolist()) and set(one.tolist()) <= set(two.tolist())
    rng = torch.Generator().manual_seed(0)
    state = rng.get_state()
    assert pick_schedule([four], rng) is four and torch.equal(rng.get_state(), state)
    assert {len(pick_schedule([one, two, four], rng)) - 1 for _ in range(40)} == {1, 2, 4}
    with pytest.raises(ValueError, match="train_steps must be >= 1"):
        load_config(DMD2Config, None, ["generator.train_steps=[0, 2]"])

    seen: list[int] = []
    states = dmd2.generator_states

    def spy(teacher, generator, cond, sigmas, shape, rng):
        seen.append(len(sigmas) - 1)
        return states(teacher, generator, cond, sigmas, shape, rng)

    monkeypatch.setattr(dmd2, "generator_states", spy)
    mixed = train(_cfg(tmp_path, tiny_wan_dir, "mixed", "train.max_steps=4", "generator.train_steps=[1, 2, 3]"))
    assert len(seen) == 4 * 3 and set(seen) <= {1, 2, 3} and len(set(seen)) > 1  # 2 fake + 1 generator update a step
    meta = json.loads((mixed.final / "vidpost.json").read_text())
    assert meta["generation"]["steps"] == 3 and meta["distilled"]["train_steps"] == [1, 2, 3]
    plain = train(_cfg(tmp_path, tiny_wan_dir, "plain", "train.max_steps=2"))
    single = train(_cfg(tmp_path, tiny_wan_dir, "single", "train.max_steps=2", "generator.train_steps=[3]"))
    assert [h["loss_dmd"] for h in plain.history] == [h["loss_dmd"] for h in single.history]
    for n, p in plain.extra["generator"].named_parameters():
        assert torch.equal(p, dict(single.extra["generator"].named_parameters())[n])


def test_bad_settings_are_one_line_errors(tiny_wan_dir, capsys):
    from vidpost.pipelines.distill import main

    assert main(["--method", "dmd2", f"model.teacher={tiny_wan_dir}", "generator.step=4"]) == 2
    assert "generator.step" in capsys.readouterr().err
    assert main(["--method", "dmd2", "gan.weight=0.1"]) == 2
    assert "gan.real_data" in capsys.readouterr().err
    assert main(["--method", "sdxl"]) == 2
    assert "--method must be one of" in capsys.readouterr().err


def test_the_shapes_preset_validates_and_names_its_method():
    from vidpost.pipelines.distill import method_of

    root = Path(__file__).resolve().parents[1]
    path = root / "configs" / "shapes" / "dmd2.yaml"
    assert method_of(["--config", str(path)]) == ("dmd2", ["--config", str(path)])
    cfg = load_config(DMD2Config, path)
    assert cfg.model.teacher == "shapes-rl" and cfg.generator.steps == 4 and cfg.dmd.guidance_scale == 5.0


def test_two_cpu_processes_average_their_gradients(tmp_path, tiny_wan_dir, monkeypatch):
    """`accelerate launch --num_processes 2` (gloo): each process draws its own batch, the gradients are averaged, and
    the run checks at the end that both processes hold the same weights (it would exit non-zero otherwise)."""
    import subprocess
    import sys

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = _cfg(tmp_path, tiny_wan_dir, "ddp", "train.max_steps=2")
    overrides = [f"{k}={v}" for k, v in _flat_overrides(tmp_path, tiny_wan_dir, "ddp", "train.max_steps=2")]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    cmd = [*launch, "-m", "vidpost.pipelines.distill", "--method", "dmd2", *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    hist = json.loads((Path(cfg.output_dir) / "history.json").read_text())
    assert [h["step"] for h in hist] == [1, 2]
    assert (Path(cfg.output_dir) / "final" / "model_index.json").exists()


def _flat_overrides(tmp_path: Path, model: Path, name: str, *extra: str) -> list[tuple[str, str]]:
    cfg = _cfg(tmp_path, model, name, *extra)
    return [
        ("output_dir", cfg.output_dir),
        ("model.teacher", str(model)),
        ("data.prompts", json.dumps(PROMPTS)),
        ("data.sample_prompts", json.dumps(PROMPTS[:1])),
        ("log.sample_count", "1"),
        ("data.num_frames", "5"),
        ("data.height", "32"),
        ("data.width", "32"),
        ("generator.steps", "3"),
        ("fake_score.updates", "1"),
        ("train.batch_size", "2"),
        ("train.max_steps", str(cfg.train.max_steps)),
        ("checkpoint.every", "0"),
        ("log.tensorboard", "false"),
    ]


def test_the_student_composes_with_enhance_a_video_step_caching_and_fp8_attention(tmp_path, tiny_wan_dir):
    """The student folder samples on its own defaults (3 steps, no CFG) under Enhance-A-Video, a first-block step cache
    and the FP8 + block-sparse attention (reference backend): finite videos that differ from the plain ones by a
    bounded amount."""
    from vidpost.evaluation.settings import resolve_settings
    from vidpost.models.attention import force_reference
    from vidpost.models.inference import apply_inference

    result = train(_cfg(tmp_path, tiny_wan_dir, "run", "train.max_steps=1"))
    student = load(result.final)
    s = resolve_settings(result.final, student, num_frames=5, height=32, width=32)
    plain = sample(student, PROMPTS[:2], **s.sample_kwargs(), seed=1)
    fp8 = {"implementation": "fp8_sparse", "options": {"tile": [1, 2, 2], "backend": "reference"}}
    for settings in (
        {"attention": {"eav": {"weight": 2.0}}},
        {"cache": {"method": "first_block", "threshold": 0.1}},
        {"attention": fp8},
    ):
        with force_reference():
            handle = apply_inference(student, settings, num_inference_steps=s.steps)
            try:
                out = sample(student, PROMPTS[:2], **s.sample_kwargs(), seed=1)
            finally:
                handle.remove()
        assert torch.isfinite(out).all() and (out - plain).abs().mean() < 0.2, settings


def test_dmd2_runs_on_the_hunyuan_video_miniature(tmp_path, tiny_hunyuan_dir):
    result = train(_cfg(tmp_path, tiny_hunyuan_dir, "hy", "train.max_steps=1", "fake_score.updates=1"))
    assert result.history[0]["loss_dmd"] > 0 and (result.final / "model_index.json").exists()
    student = load(result.final)
    assert student.family == "hunyuan_video" and student.default_guidance_scale == 1.0


def test_a_teacher_lora_is_fused_into_the_teacher(tmp_path, tiny_wan_dir):
    """`model.lora` (an RL stage's LoRA): the teacher the student learns from is base + LoRA, fused (no peft left)."""
    from vidpost.pipelines.distill_dmd2 import DMD2ModelConfig
    from vidpost.sections import LoraConfig
    from vidpost.training.dmd2 import load_teacher
    from vidpost.training.lora import add_lora, lora_state_dict

    a = load(tiny_wan_dir)
    add_lora(a, LoraConfig(rank=4))
    with torch.no_grad():
        for n, p in a.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    a.save_lora(tmp_path / "lora", lora_state_dict(a.transformer))
    teacher, _ = load_teacher(DMD2ModelConfig(teacher=str(tiny_wan_dir), lora=str(tmp_path / "lora")), "cpu")
    assert not [n for n, _ in teacher.transformer.named_parameters() if "lora" in n]
    x, cond = torch.randn(teacher.latent_shape(1, 5, 32, 32)), teacher.encode_prompt(PROMPTS[:1])
    with torch.no_grad():
        fused = teacher.predict_velocity(x, 0.5, cond)
        torch.testing.assert_close(fused, load(tiny_wan_dir, lora=tmp_path / "lora").predict_velocity(x, 0.5, cond))
        assert (fused - load(tiny_wan_dir).predict_velocity(x, 0.5, cond)).abs().max() > 1e-3
