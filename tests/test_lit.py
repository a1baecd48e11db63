"""LiT linear attention: kernel maths vs references, the "lit" implementation in real models, distillation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vidpost.config import load_config
from vidpost.kernels.linear_attention import (
    grid_dwconv,
    key_mask_from_attention_mask,
    linear_attention,
    linear_attention_naive,
)
from vidpost.models import WanAdapter, load
from vidpost.models.attention import (
    AttentionConfig,
    AttentionContext,
    force_reference,
    install_attention,
    sdpa_attention,
)
from vidpost.models.lit import LiTAttention, lit_modules, load_lit_student
from vidpost.models.sampling import sample
from vidpost.pipelines.distill import DistillConfig, StudentConfig, make_student, train
from vidpost.training.distill import AttentionTap, distill_batch, distill_loss


def _loop_reference(q, k, v, mask, eps=1e-6):
    """out_i = Σ_j m_j φ(q_i)·φ(k_j) v_j / (Σ_j m_j φ(q_i)·φ(k_j) + ε), one element at a time (float64)."""
    b, s, h, _ = q.shape
    out = torch.zeros(b, s, h, v.shape[-1], dtype=torch.float64)
    qf, kf, vf = F.relu(q.double()), F.relu(k.double()), v.double()
    for bi in range(b):
        for hi in range(h):
            for i in range(s):
                w = torch.stack(
                    [qf[bi, i, hi] @ kf[bi, j, hi] * (1.0 if mask is None else float(mask[bi, j])) for j in range(s)]
                )
                out[bi, i, hi] = (w[:, None] * vf[bi, :, hi]).sum(0) / (w.sum() + eps)
    return out


def _qkv(b, s, h, d, dv=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s, h, d, generator=g)
    k = torch.randn(b, s, h, d, generator=g)
    v = torch.randn(b, s, h, dv or d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_naive_form_matches_the_formula_elementwise():
    q, k, v = _qkv(2, 7, 2, 3, dv=5)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    ref = _loop_reference(q, k, v, mask)
    torch.testing.assert_close(linear_attention_naive(q, k, v, mask).double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_mask", [False, True])
def test_kv_state_form_matches_naive_fp32_odd_sizes(with_mask):
    q, k, v = _qkv(3, 53, 3, 7, dv=11, seed=1)
    mask = None
    if with_mask:  # 40 video tokens + 13 text tokens, the last 5 of sample 0 and 2 of sample 2 are padding
        mask = torch.ones(3, 53, dtype=torch.bool)
        mask[0, -5:] = False
        mask[2, -2:] = False
    out = linear_attention(q, k, v, mask)
    ref = linear_attention_naive(q, k, v, mask)
    assert out.shape == (3, 53, 3, 11) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    if with_mask:  # padding keys must not contribute: changing their values changes nothing
        v2 = v.clone()
        v2[0, -5:] = 100.0
        torch.testing.assert_close(linear_attention(q, k, v2, mask), out)


def test_bf16_inputs_accumulate_in_fp32():
    q, k, v = _qkv(1, 301, 2, 16, seed=2, dtype=torch.bfloat16)
    out = linear_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    ref = linear_attention_naive(q.float(), k.float(), v.float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_key_mask_from_hunyuan_style_mask_and_rejects_full_masks():
    m = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    m[1, ..., -3:] = False
    km = key_mask_from_attention_mask(m, 2, 9)
    assert km.shape == (2, 9) and km[0].all() and not km[1, -3:].any() and km[1, :-3].all()
    with pytest.raises(ValueError, match="query-independent"):
        key_mask_from_attention_mask(torch.tril(torch.ones(9, 9, dtype=torch.bool)), 2, 9)


def test_grid_dwconv_matches_a_hand_built_conv3d():
    b, c, grid = 2, 5, (3, 5, 4)
    g = torch.Generator().manual_seed(3)
    video = torch.randn(b, c, *grid, generator=g)
    w = torch.randn(c, 1, 3, 3, 3, generator=g)
    bias = torch.randn(c, generator=g)
    expected = torch.stack(
        [F.conv3d(video[:, i : i + 1], w[i : i + 1], bias[i : i + 1], padding=1)[:, 0] for i in range(c)], 1
    )
    tokens = video.permute(0, 2, 3, 4, 1).reshape(b, -1, c)  # frame-major t·H·W + h·W + w
    out = grid_dwconv(tokens, grid, w, bias)
    torch.testing.assert_close(out, expected.permute(0, 2, 3, 4, 1).reshape(b, -1, c), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="tokens"):
        grid_dwconv(tokens, (3, 5, 5), w, bias)


@pytest.mark.parametrize("n_text", [0, 5])
def test_lit_module_conv_on_video_tokens_only_and_head_grouping(n_text):
    n_video, h, d = 24, 4, 6
    grid = (2, 3, 4)
    q, k, v = _qkv(2, n_video + n_text, h, d, seed=4)
    mask = None
    if n_text:
        mask = torch.ones(2, 1, 1, n_video + n_text, dtype=torch.bool)
        mask[0, ..., -2:] = False
    ctx = AttentionContext(grid, n_video, None, None, None, "cond", 0, attention_mask=mask)
    m = LiTAttention(h, h * d, heads=2)
    torch.nn.init.normal_(m.dwc_weight)
    torch.nn.init.normal_(m.dwc_bias)
    out = m(q, k, v, ctx)
    key_mask = None if mask is None else mask[:, 0, 0]
    grouped = [t.reshape(2, n_video + n_text, 2, 2 * d) for t in (q, k, v)]
    lin = linear_attention_naive(*grouped, key_mask).reshape(2, -1, h, d)
    conv = grid_dwconv(v[:, :n_video].reshape(2, n_video, h * d), grid, m.dwc_weight, m.dwc_bias)
    expected_video = lin[:, :n_video] + conv.reshape(2, n_video, h, d)
    torch.testing.assert_close(out[:, :n_video], expected_video, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[:, n_video:], lin[:, n_video:], rtol=1e-4, atol=1e-5)  # text: no conv term
    # grouping heads is not the same maths as per-head linear attention
    per_head = linear_attention_naive(q, k, v, key_mask)
    assert not torch.allclose(
        per_head, out.float() - torch.cat([conv.reshape(2, n_video, h, d), lin[:, n_video:] * 0], 1), atol=1e-3
    )
    with pytest.raises(ValueError, match="grid"):
        m(q, k, v, AttentionContext(None, n_video, None, None, None, "cond", 0, attention_mask=mask))


def test_lit_options_are_checked():
    a = WanAdapter.tiny(seed=0)
    with pytest.raises(ValueError, match="unknown option 'head'"):
        install_attention(a, AttentionConfig("lit", options={"head": 1}))
    with pytest.raises(ValueError, match="divide"):
        install_attention(a, AttentionConfig("lit", options={"heads": 3}))
    with pytest.raises(ValueError, match="odd"):
        install_attention(a, AttentionConfig("lit", options={"dwc_kernel": 2}))


SIZE = dict(num_frames=5, height=32, width=32, num_inference_steps=3, guidance_scale=3.0, shift=3.0, seed=0)


def test_lit_on_tiny_wan_samples_and_reference_path_agrees():
    a = WanAdapter.tiny(seed=0, num_layers=2)
    dense = sample(a, ["a red circle"], **SIZE)
    with install_attention(a, AttentionConfig("lit")):
        for m in lit_modules(a).values():
            torch.nn.init.normal_(m.dwc_weight, std=0.1)
        state = {k: p.detach().clone() for k, p in a.transformer.named_parameters()}
        fast = sample(a, ["a red circle"], **SIZE)
    with force_reference(), install_attention(a, AttentionConfig("lit")) as h:
        assert all(p.impl.reference for p in h.processors)
        a.transformer.load_state_dict(state, strict=False)
        ref = sample(a, ["a red circle"], **SIZE)
    assert torch.isfinite(fast).all() and fast.shape == dense.shape
    assert not torch.allclose(fast, dense, atol=1e-3)  # linear attention is not softmax attention
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


def test_lit_on_tiny_hunyuan_joint_attention_runs(tiny_hunyuan_dir):
    a = load(tiny_hunyuan_dir)
    x = torch.randn(a.latent_shape(1, 5, 32, 32))
    cond = a.encode_prompt(["a red circle"])
    dense = a.predict_velocity(x, 0.5, cond)
    with install_attention(a, AttentionConfig("lit")) as h:
        assert len(h.processors) >= 2 and all(isinstance(p.impl, LiTAttention) for p in h.processors)
        out = a.predict_velocity(x, 0.5, cond)
    assert torch.isfinite(out).all() and not torch.allclose(out, dense, atol=1e-4)


def test_hybrid_changes_only_the_chosen_layers():
    teacher = WanAdapter.tiny(seed=0, num_layers=3)
    student = make_student(teacher, StudentConfig(layers=[1]))
    impls = [blk.attn1.processor.impl for blk in student.transformer.blocks]
    assert impls[0] is sdpa_attention and isinstance(impls[1], LiTAttention) and impls[2] is sdpa_attention
    taps = [AttentionTap(teacher.transformer, None), AttentionTap(student.transformer, None)]
    x = torch.randn(teacher.latent_shape(2, 5, 32, 32))
    cond = teacher.encode_prompt(["a red circle", "a blue square"])
    v_t, v_s = teacher.predict_velocity(x, 0.7, cond), student.predict_velocity(x, 0.7, cond)
    a_t, a_s = taps[0].pop(), taps[1].pop()
    torch.testing.assert_close(a_s[0][0], a_t[0][0], rtol=1e-5, atol=1e-6)  # before the LiT layer: identical
    assert not torch.allclose(a_s[1][0], a_t[1][0], atol=1e-4)
    assert not torch.allclose(v_s, v_t, atol=1e-4)


def test_inheritance_on_and_off():
    teacher = WanAdapter.tiny(seed=0, num_layers=3)
    on = make_student(teacher, StudentConfig(layers=[0, 2], inherit=True))
    off = make_student(teacher, StudentConfig(layers=[0, 2], inherit=False))
    t = dict(teacher.transformer.named_parameters())
    for name, p in on.transformer.named_parameters():
        if name in t:
            torch.testing.assert_close(p.detach(), t[name].float())
    off_p = dict(off.transformer.named_parameters())
    for i in range(3):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            name = f"blocks.{i}.attn1.{proj}.weight"
            same = torch.equal(off_p[name].detach(), t[name].detach().float())
            assert same == (i == 1), name  # re-initialised exactly in the LiT layers
    assert torch.equal(off_p["blocks.0.ffn.net.0.proj.weight"].detach(), t["blocks.0.ffn.net.0.proj.weight"].float())
    for m in lit_modules(on).values():
        assert not m.dwc_weight.any() and not m.dwc_bias.any()  # the conv branch starts at zero
    assert teacher.transformer.blocks[0].attn1.processor is not on.transformer.blocks[0].attn1.processor


def _cfg(tmp_path: Path, model: Path, name: str, *extra: str) -> DistillConfig:
    overrides = [
        f"output_dir={tmp_path / name}",
        f"model.teacher={model}",
        f"data.prompts={json.dumps(['a red circle moves right', 'a blue square', 'a green dot', 'red'])}",
        "data.num_frames=5",
        "data.height=32",
        "data.width=32",
        "data.steps=3",
        "data.guidance_scale=3.0",
        "data.uncond_prob=0.25",
        "train.batch_size=3",
        "optim.lr=1e-3",
        "checkpoint.every=0",
        "log.tensorboard=false",
        *extra,
    ]
    return load_config(DistillConfig, None, overrides)


def _fixed_batch_loss(teacher, student, cfg) -> float:
    from vidpost.models.sampling import flow_sigmas

    sigmas = flow_sigmas(cfg.data.steps, teacher.default_shift, teacher.schedule)
    shape = teacher.latent_shape(cfg.train.batch_size, 5, 32, 32)
    x, sig, emb = distill_batch(teacher, cfg.data.prompts, teacher.encode_prompt([""]), cfg, shape, sigmas, 0)
    taps = [AttentionTap(teacher.transformer, None), AttentionTap(student.transformer, None)]
    with torch.no_grad():
        v_t, v_s = teacher.predict_velocity(x, sig, emb), student.predict_velocity(x, sig, emb)
    loss, _ = distill_loss(v_s, v_t, taps[1].pop(), taps[0].pop(), cfg.train.attn_weight)
    for tap in taps:
        tap.remove()
    return float(loss)


def test_distillation_moves_every_parameter_lowers_the_loss_and_saves_a_loadable_student(tmp_path, tiny_wan_dir):
    cfg = _cfg(tmp_path, tiny_wan_dir, "run", "train.max_steps=3", "optim.max_grad_norm=0")
    teacher = load(tiny_wan_dir)
    fresh = make_student(teacher, cfg.student)
    before_params = {n: p.detach().clone() for n, p in fresh.transformer.named_parameters() if p.requires_grad}
    before = _fixed_batch_loss(teacher, fresh, cfg)
    result = train(cfg)
    student = result.extra["student"]
    after_params = {n: p.detach() for n, p in student.transformer.named_parameters() if p.requires_grad}
    assert set(after_params) == set(before_params) and any("dwc_weight" in n for n in after_params)
    unchanged = [n for n in before_params if torch.equal(before_params[n], after_params[n])]
    assert not unchanged, unchanged
    after = _fixed_batch_loss(teacher, student, cfg)
    assert after < before, (before, after)
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in hist] == [1, 2, 3] and hist[0]["loss_attention"] > 0

    final = result.final
    assert result.kind == "student" and result.extra["lit_layers"] == [0, 1]
    meta = json.loads((final / "lit.json").read_text())
    assert meta["attention"]["implementation"] == "lit" and meta["attention"]["layers"] is None
    reloaded = load_lit_student(final)
    assert sorted(lit_modules(reloaded)) == sorted(lit_modules(student))
    x = torch.randn(teacher.latent_shape(1, 5, 32, 32))
    cond = teacher.encode_prompt(["a red circle moves right"])
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.predict_velocity(x, 0.4, cond), student.predict_velocity(x, 0.4, cond), rtol=1e-4, atol=1e-5
        )
    # the transformer folder is a plain dense diffusers model (no LiT keys in it)
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    keys = load_file(str(final / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert not [k for k in keys if "processor" in k]
    WanTransformer3DModel.from_pretrained(final, subfolder="transformer")


def test_resume_equals_uninterrupted(tmp_path, tiny_wan_dir):
    common = ("student.trainable=attention", "student.layers=[1]", "checkpoint.every=2")
    full = train(_cfg(tmp_path, tiny_wan_dir, "full", "train.max_steps=4", *common))
    train(_cfg(tmp_path, tiny_wan_dir, "part", "train.max_steps=2", *common))
    resumed = train(_cfg(tmp_path, tiny_wan_dir, "part", "train.max_steps=4", *common), resume="latest")
    assert resumed.steps == 4
    a = {n: p for n, p in full.extra["student"].transformer.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.extra["student"].transformer.named_parameters() if p.requires_grad}
    assert set(a) == set(b) and all(".attn1." in n and "blocks.1." in n for n in a)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-6)
    # a result's history is its invocation's steps; history.json continues over the whole run
    assert [h["loss"] for h in full.history[2:]] == pytest.approx([h["loss"] for h in resumed.history], rel=1e-5)
    whole = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [h["loss"] for h in full.history] == pytest.approx([h["loss"] for h in whole], rel=1e-5)


def test_unknown_config_key_is_an_error(tiny_wan_dir, capsys):
    from vidpost.pipelines.distill import main

    assert main([f"model.teacher={tiny_wan_dir}", "student.inherits=false"]) == 2
    assert "inherits" in capsys.readouterr().err


def test_student_folder_keeps_the_teacher_generation_settings(tmp_path):
    from vidpost.training.distill import carry_generation_settings

    (tmp_path / "t").mkdir()
    (tmp_path / "s").mkdir()
    (tmp_path / "t" / "vidpost.json").write_text(json.dumps({"family": "wan", "generation": {"num_frames": 17}}))
    (tmp_path / "s" / "vidpost.json").write_text(json.dumps({"family": "wan", "default_shift": 5.0}))
    carry_generation_settings(tmp_path / "t", tmp_path / "s")
    got = json.loads((tmp_path / "s" / "vidpost.json").read_text())
    assert got == {"family": "wan", "generation": {"num_frames": 17}, "default_shift": 5.0}


def test_distill_preset_validates_and_the_command_is_registered():
    from vidpost.cli import COMMANDS

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(DistillConfig, root / "configs" / "shapes" / "distill.yaml")
    assert cfg.model.teacher == "shapes" and cfg.student.inherit and cfg.student.layers is None
    assert COMMANDS["distill"][0] == "vidpost.pipelines.distill"
