"""Quantisation-aware recovery (`vidpost qat`): the LoRA through the fake quantisation (straight-through gradients,
exact values), the merge, and the stage on a miniature: it lowers the loss it trains, resumes exactly, and its
folder loads quantised to the outputs it trained as."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidpost.config import from_dict, load_config
from vidpost.kernels.quant_formats import fake_quant
from vidpost.models import load
from vidpost.models.quant import QuantLinear, QuantRecipe, quant_modules
from vidpost.pipelines.quant_qat import QATConfig, train

ROOT = Path(__file__).resolve().parents[1]
W4A4 = {"weight": {"format": "int4", "scale": "channel"}, "activation": {"format": "int4", "scale": "token"}}


def _layer(seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    return QuantLinear(torch.nn.Linear(64, 32), from_dict(QuantRecipe, dict(W4A4)))


def test_a_zero_lora_leaves_the_values_and_gradients_pass_straight_through_both_quantisers():
    q, x = _layer(), torch.randn(3, 5, 64)
    frozen = q(x).detach()
    q.enable_qat(rank=4, alpha=8.0, generator=torch.Generator().manual_seed(0))
    out = q(x)
    assert torch.equal(out, frozen)  # B = 0: exactly the frozen layer
    g = torch.randn_like(out)
    (out * g).sum().backward()
    # straight through: dL/dW = gᵀ·Q(x) and dL/dB = (alpha / rank)·dL/dW·Aᵀ, the quantisers' derivatives taken as 1
    xq = fake_quant(x, "int4", "token").reshape(-1, 64)
    grad_w = g.reshape(-1, 32).T @ xq
    torch.testing.assert_close(q.lora_B.grad, 2.0 * grad_w @ q.lora_A.detach().T, rtol=1e-4, atol=1e-5)
    assert float(q.lora_B.grad.abs().sum()) > 0


def test_merge_gives_the_layer_it_trained_as():
    q, x = _layer(1), torch.randn(7, 64)
    q.enable_qat(rank=4, alpha=4.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q.lora_B.normal_(0, 0.05)
        training_forward = q(x)
        w = q.weight_fp + q.lora_delta()
    q.merge_qat()
    assert q.lora_A is None and not [p for p in q.parameters() if p.requires_grad]
    torch.testing.assert_close(q(x), training_forward, rtol=0, atol=0)
    torch.testing.assert_close(q.weight_q, fake_quant(w, "int4", "channel"), rtol=0, atol=0)


def _cfg(tmp_path: Path, model: Path, name: str, *extra: str) -> QATConfig:
    overrides = [
        f"recipe={ROOT / 'configs' / 'quant' / 'w4a4-int4.yaml'}",
        f"output_dir={tmp_path / name}",
        f"model.teacher={model}",
        f"data.prompts={json.dumps(['a red circle moves right', 'a blue square', 'a green dot', 'red'])}",
        "data.num_frames=5",
        "data.height=32",
        "data.width=32",
        "data.steps=3",
        "data.guidance_scale=3.0",
        "train.batch_size=3",
        "optim.lr=3e-3",
        "optim.warmup_steps=0",
        "checkpoint.every=0",
        "log.tensorboard=false",
        *extra,
    ]
    return load_config(QATConfig, None, overrides)


def test_qat_lowers_its_loss_trains_only_the_loras_and_its_folder_loads_as_trained(tmp_path, tiny_wan_dir):
    from vidpost.evaluation.prompts import load_prompt_pool
    from vidpost.models.sampling import flow_sigmas
    from vidpost.training.distill import distill_batch, distill_loss

    untrained = train(_cfg(tmp_path, tiny_wan_dir, "zero", "train.max_steps=1", "optim.lr=0"))
    cfg = _cfg(tmp_path, tiny_wan_dir, "run", "train.max_steps=8", "optim.lr=1e-3")
    result = train(cfg)
    assert result.history[0]["loss"] == pytest.approx(untrained.history[0]["loss"], rel=1e-6)
    student = result.extra["student"]
    # the loss on batches it never trained on (steps 100-103's) falls: the mean over them, before and after
    teacher = load(tiny_wan_dir)
    shape = teacher.latent_shape(cfg.train.batch_size, 5, 32, 32)
    sigmas = flow_sigmas(cfg.data.steps, teacher.default_shift, teacher.schedule)
    pool, null = load_prompt_pool(cfg.data.prompts, cfg.data.pool_size), teacher.encode_prompt([""])

    def held_out_loss(model) -> float:
        total = 0.0
        for step in range(100, 104):
            x, sig, emb = distill_batch(teacher, pool, null, cfg, shape, sigmas, step)
            with torch.no_grad():
                v_t = teacher.predict_velocity(x, sig, emb)
                total += float(distill_loss(model.predict_velocity(x, sig, emb), v_t, {}, {}, 0.0)[0]) / 4
        return total

    before, after = held_out_loss(untrained.extra["student"]), held_out_loss(student)
    assert after < 0.9 * before, (before, after)
    layers = quant_modules(student.transformer)
    assert layers and all(m.lora_A is None for m in layers.values())  # merged
    meta = json.loads((result.final / "quant.json").read_text())
    assert meta["recipe"]["name"] == "w4a4-int4" and meta["source"].endswith("+ qat")
    reloaded = load(result.final)
    assert reloaded.quant_report is not None and sorted(quant_modules(reloaded.transformer)) == sorted(layers)
    x = torch.randn(student.latent_shape(1, 5, 32, 32))
    cond = student.encode_prompt(["a red circle moves right"])
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.predict_velocity(x, 0.4, cond), student.predict_velocity(x, 0.4, cond), rtol=1e-5, atol=1e-6
        )
        # and the recovery is in the weights: the folder differs from quantising the original model
        fresh = load(tiny_wan_dir)
        from vidpost.models.quant import install_quant, read_recipe

        install_quant(fresh, read_recipe(ROOT / "configs" / "quant" / "w4a4-int4.yaml"))
        assert not torch.allclose(fresh.predict_velocity(x, 0.4, cond), reloaded.predict_velocity(x, 0.4, cond))


def test_qat_resume_equals_uninterrupted(tmp_path, tiny_wan_dir):
    full = train(_cfg(tmp_path, tiny_wan_dir, "full", "train.max_steps=4", "checkpoint.every=2"))
    train(_cfg(tmp_path, tiny_wan_dir, "part", "train.max_steps=2", "checkpoint.every=2"))
    resumed = train(_cfg(tmp_path, tiny_wan_dir, "part", "train.max_steps=4", "checkpoint.every=2"), resume="latest")
    # a result's history is its invocation's steps; history.json continues over the whole run
    assert [h["loss"] for h in full.history[2:]] == pytest.approx([h["loss"] for h in resumed.history], rel=1e-5)
    whole = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [h["loss"] for h in full.history] == pytest.approx([h["loss"] for h in whole], rel=1e-5)
    a = {n: m.weight_fp for n, m in quant_modules(full.extra["student"].transformer).items()}
    b = {n: m.weight_fp for n, m in quant_modules(resumed.extra["student"].transformer).items()}
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-6)


def test_qat_preset_validates_and_bad_input_is_one_line(tmp_path, capsys):
    from vidpost.cli import COMMANDS
    from vidpost.pipelines.quant_qat import main

    load_config(QATConfig, ROOT / "configs" / "shapes" / "qat-w4a4.yaml")
    assert COMMANDS["qat"][0] == "vidpost.pipelines.quant_qat"
    assert main([f"output_dir={tmp_path}", "recipe=configs/quant/none.yaml"]) == 2
    assert "recipe configs/quant/none.yaml does not exist" in capsys.readouterr().err
