"""Video-context attention processors: parity with diffusers' processors, the context contract, Enhance-A-Video."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from vidpost.config import from_dict
from vidpost.kernels.eav import cross_frame_intensity_reference
from vidpost.models import HunyuanVideoAdapter, WanAdapter
from vidpost.models import attention as A
from vidpost.models.sampling import flow_sigmas, sample

PROMPT = "a red circle moves to the right"


def _inputs(adapter, frames=9, size=32, seed=1):
    torch.manual_seed(seed)
    x = torch.randn(adapter.latent_shape(1, frames, size, size))
    return x, adapter.encode_prompt([PROMPT]), adapter.encode_prompt(["blue"])


@pytest.mark.parametrize("cls", [WanAdapter, HunyuanVideoAdapter])
def test_sdpa_processors_match_stock_and_remove_restores(cls):
    adapter = cls.tiny(seed=0)
    x, cond, _ = _inputs(adapter)
    v0 = adapter.predict_velocity(x, 0.7, cond)
    handle = A.install_attention(adapter, A.AttentionConfig())
    sites = A.attention_sites(adapter.transformer)
    assert len(handle.processors) == len(sites) > 0
    assert all(isinstance(attn.processor, A._VideoAttnProcessor) for _, attn, _ in sites)
    v1 = adapter.predict_velocity(x, 0.7, cond)
    torch.testing.assert_close(v1, v0, atol=1e-6, rtol=0)
    handle.remove()
    stock = WanAttnProcessor if cls is WanAdapter else HunyuanVideoAttnProcessor2_0
    assert all(isinstance(attn.processor, stock) for _, attn, _ in sites)
    if cls is WanAdapter:  # cross-attention was never touched
        assert all(isinstance(b.attn2.processor, WanAttnProcessor) for b in adapter.transformer.blocks)
    torch.testing.assert_close(adapter.predict_velocity(x, 0.7, cond), v0, atol=0, rtol=0)


def test_hunyuan_layer_indices_cover_dual_then_single_blocks():
    adapter = HunyuanVideoAdapter.tiny(seed=0, num_layers=2, num_single_layers=2)
    sites = A.attention_sites(adapter.transformer)
    assert [i for i, _, _ in sites] == [0, 1, 2, 3]
    assert sites[0][1] is adapter.transformer.transformer_blocks[0].attn
    assert sites[2][1] is adapter.transformer.single_transformer_blocks[0].attn


class _ToyAttention(torch.nn.Module):
    """A parameterised implementation that records its context: out = scale · sdpa."""

    def __init__(self, layer: int, log: list, init: float):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(init))
        self.layer = layer
        self.log = log

    def forward(self, q, k, v, ctx):
        self.log.append(ctx)
        return A.sdpa_attention(q, k, v, ctx) * self.scale


def test_toy_implementation_sees_context_during_sample_with_cfg():
    log: list[A.AttentionContext] = []
    A.register_attention("toy_ctx", lambda attn, layer, options: _ToyAttention(layer, log, **options))
    try:
        adapter = WanAdapter.tiny(seed=0)
        kw = dict(num_frames=9, height=32, width=48, num_inference_steps=3, guidance_scale=4.0, shift=3.0, seed=0)
        cfg = A.AttentionConfig(implementation="toy_ctx", layers=[1], options={"init": 1.0})
        with A.install_attention(adapter, cfg) as handle:
            names = [n for n, _ in adapter.transformer.named_parameters()]
            toy = [n for n in names if n.endswith("processor.impl.scale")]
            assert toy == ["blocks.1.attn1.processor.impl.scale"]
            assert isinstance(handle.processors[1].impl, _ToyAttention)
            assert handle.processors[0].impl is A.sdpa_attention  # hybrid: the other layer stays sdpa
            out = sample(adapter, [PROMPT], **kw)
        ref = sample(adapter, [PROMPT], **kw)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)  # scale 1 → same as stock
        sigmas = flow_sigmas(3, 3.0, adapter.schedule).tolist()
        grid = adapter.latent_grid(adapter.latent_shape(1, 9, 32, 48))
        assert grid == (3, 2, 3)
        assert [(c.step, c.cfg_branch) for c in log] == [(i, b) for i in range(3) for b in ("cond", "uncond")]
        for c in log:
            assert c.grid == grid and c.num_video_tokens == 18 and c.layer == 1 and c.num_steps == 3
            assert c.sigma == pytest.approx(sigmas[c.step])
        assert adapter.attention_state.step is None  # cleared after sampling
        # the parameter is live: changing it changes the output
        with A.install_attention(adapter, A.AttentionConfig("toy_ctx", options={"init": 0.0})):
            assert not torch.allclose(sample(adapter, [PROMPT], **kw), ref, atol=1e-3)
    finally:
        A.unregister_attention("toy_ctx")


def test_flash_implementation_both_sides(monkeypatch):
    calls = []

    def fake_flash(q, k, v):
        calls.append(q.shape)
        return A.sdpa_attention(q, k, v, A.AttentionContext(None, q.shape[1], None, None, None, "cond", 0))

    fake = types.ModuleType("flash_attn")
    fake.flash_attn_func = fake_flash
    fake.__spec__ = types.SimpleNamespace(name="flash_attn")
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    monkeypatch.setattr(A.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    monkeypatch.setattr(A, "_flash_supported", lambda q, ctx: ctx.attention_mask is None)  # CPU stands in for CUDA
    adapter = WanAdapter.tiny(seed=0)
    x, cond, _ = _inputs(adapter)
    v0 = adapter.predict_velocity(x, 0.5, cond)
    with A.install_attention(adapter, A.AttentionConfig("flash")) as h:
        assert h.processors[0].impl is not A.sdpa_attention
        torch.testing.assert_close(adapter.predict_velocity(x, 0.5, cond), v0, atol=1e-6, rtol=0)
    assert len(calls) == len(adapter.transformer.blocks)
    calls.clear()
    with A.force_reference(), A.install_attention(adapter, A.AttentionConfig("flash")) as h:
        assert all(p.impl is A.sdpa_attention for p in h.processors)
        adapter.predict_velocity(x, 0.5, cond)
    monkeypatch.setenv(A.ENV_REFERENCE, "1")
    with A.install_attention(adapter, A.AttentionConfig("flash")) as h:
        assert all(p.impl is A.sdpa_attention and p.eav_impl == "reference" for p in h.processors)
    assert calls == []


def test_unavailable_implementation_falls_back_to_sdpa():
    A.register_attention("never", lambda *a: pytest.fail("factory must not run"), available=lambda: False)
    try:
        adapter = WanAdapter.tiny(seed=0)
        with A.install_attention(adapter, A.AttentionConfig("never")) as h:
            assert all(p.impl is A.sdpa_attention for p in h.processors)
    finally:
        A.unregister_attention("never")


def test_config_errors():
    adapter = WanAdapter.tiny(seed=0)
    with pytest.raises(ValueError, match="unknown attention implementation 'nope'"):
        A.install_attention(adapter, A.AttentionConfig("nope"))
    with pytest.raises(ValueError, match="layer 5 out of range"):
        A.install_attention(adapter, A.AttentionConfig(layers=[5]))
    with pytest.raises(ValueError, match="layer_weights: layer 7 out of range"):
        A.install_attention(adapter, A.AttentionConfig(eav=A.EavConfig(layer_weights={7: 1.0})))
    assert all(
        isinstance(b.attn1.processor, WanAttnProcessor) for b in adapter.transformer.blocks
    )  # nothing installed
    with pytest.raises(ValueError, match="unknown key 'window'"):
        A.install_attention(adapter, A.AttentionConfig(options={"window": 3}))
    with pytest.raises(ValueError, match="eav.weigth"):
        from_dict(A.AttentionConfig, {"eav": {"weigth": 2}})
    with pytest.raises(ValueError, match="enhance_a_video.weigth"):  # the old key is still read
        from_dict(A.AttentionConfig, {"enhance_a_video": {"weigth": 2}})
    with pytest.raises(ValueError, match="unknown branch 'pos'"):
        A.EavConfig(branches=["pos"])
    cfg = from_dict(A.AttentionConfig, {"layers": [0], "eav": {"weight": 2, "layer_weights": {1: 0.5}, "step_end": 4}})
    assert cfg.eav.layer_weights == {1: 0.5} and cfg.layers == [0]
    old = from_dict(A.AttentionConfig, {"layers": [0], "enhance_a_video": {"weight": 2, "layer_weights": {"1": 0.5}}})
    assert old.eav == A.EavConfig(weight=2, layer_weights={1: 0.5}) and old.enhance_a_video is old.eav
    assert A.AttentionConfig(enhance_a_video=old.eav) == A.AttentionConfig(eav=old.eav)
    with pytest.raises(ValueError, match="old name of 'eav'"):
        from_dict(A.AttentionConfig, {"eav": {}, "enhance_a_video": {}})
    e = cfg.eav
    assert (
        e.weight_for(1, 0, "cond") == 0.5
        and e.weight_for(0, 4, "cond") is None
        and e.weight_for(0, None, "cond") is None
    )


def _attn1_outputs(adapter, layer, cfg, x, cond):
    """attn1 output at `layer` and the (q, k) its implementation received, for one cond pass."""
    seen = {}

    def record(q, k, v, ctx):
        if ctx.layer == layer:
            seen["qk"] = (q.clone(), k.clone())
        return A.sdpa_attention(q, k, v, ctx)

    A.register_attention("record_qk", lambda attn, i, options: record)
    hook = adapter.transformer.blocks[layer].attn1.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    try:
        with A.install_attention(adapter, A.AttentionConfig("record_qk", eav=cfg)):
            adapter.predict_velocity(x, 0.6, cond)
    finally:
        hook.remove()
        A.unregister_attention("record_qk")
    return seen["out"], seen["qk"]


def test_eav_scales_attn1_output_by_reference_gain():
    adapter = WanAdapter.tiny(seed=0)
    x, cond, _ = _inputs(adapter, frames=13)
    f = adapter.latent_grid(x.shape)[0]
    assert f == 4
    plain, (q, k) = _attn1_outputs(adapter, 0, None, x, cond)
    w = 30.0
    eav, _ = _attn1_outputs(adapter, 0, A.EavConfig(weight=w, layers=[0]), x, cond)
    g = max(1.0, (f + w) * float(cross_frame_intensity_reference(q, k, f)[0]))
    assert g > 1.5  # the test must exercise a real gain
    torch.testing.assert_close(eav, plain * g, atol=1e-5, rtol=1e-5)


def test_eav_off_cases_equal_no_eav():
    adapter = WanAdapter.tiny(seed=0)
    x, cond, uncond = _inputs(adapter)
    v0 = adapter.predict_velocity(x, 0.6, cond, uncond, guidance_scale=5.0)
    kw = dict(num_frames=9, height=32, width=32, num_inference_steps=2, guidance_scale=5.0, shift=3.0, seed=0)
    ref = sample(adapter, [PROMPT], **kw)
    off = [
        A.EavConfig(weight=0.0),
        A.EavConfig(weight=8.0, step_start=5),
        A.EavConfig(weight=8.0, branches=[]),
        A.EavConfig(weight=8.0, layer_weights={0: 0.0, 1: 0.0}),
    ]
    for cfg in off:
        with A.install_attention(adapter, A.AttentionConfig(eav=cfg)):
            torch.testing.assert_close(sample(adapter, [PROMPT], **kw), ref, atol=0, rtol=0)
    on = A.EavConfig(weight=8.0)
    with A.install_attention(adapter, A.AttentionConfig(eav=on)):
        assert not torch.allclose(adapter.predict_velocity(x, 0.6, cond, uncond, guidance_scale=5.0), v0, atol=1e-4)
        assert not torch.allclose(sample(adapter, [PROMPT], **kw), ref, atol=1e-4)


def test_eav_cond_branch_only():
    adapter = WanAdapter.tiny(seed=0)
    x, cond, uncond = _inputs(adapter)
    v_c, v_u = adapter.predict_velocity(x, 0.6, cond), adapter.predict_velocity(x, 0.6, uncond)
    with A.install_attention(adapter, A.AttentionConfig(eav=A.EavConfig(8.0, branches=["cond"]))):
        with adapter.attention_state.branch("uncond"):
            torch.testing.assert_close(adapter.forward_transformer(x, torch.tensor([0.6]), uncond, 1.0), v_u)
        assert not torch.allclose(adapter.predict_velocity(x, 0.6, cond), v_c, atol=1e-4)


def test_eav_hunyuan_uses_video_tokens_only():
    adapter = HunyuanVideoAdapter.tiny(seed=0)
    x, cond, _ = _inputs(adapter, frames=13)
    f = adapter.latent_grid(x.shape)[0]
    attn = adapter.transformer.transformer_blocks[0].attn
    seen = {}

    def record(q, k, v, ctx):
        if ctx.layer == 0:
            seen["qk"] = (q[:, : ctx.num_video_tokens].clone(), k[:, : ctx.num_video_tokens].clone())
        return A.sdpa_attention(q, k, v, ctx)

    hook = attn.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    A.register_attention("record_qk", lambda a, i, options: record)
    try:
        outs = []
        for eav in (None, A.EavConfig(weight=30.0, layers=[0])):
            with A.install_attention(adapter, A.AttentionConfig("record_qk", eav=eav)):
                adapter.predict_velocity(x, 0.6, cond)
            outs.append(seen["out"])
    finally:
        hook.remove()
        A.unregister_attention("record_qk")
    q, k = seen["qk"]
    g = max(1.0, (f + 30.0) * float(cross_frame_intensity_reference(q, k, f)[0]))
    assert g > 1.5
    torch.testing.assert_close(outs[1][0], outs[0][0] * g, atol=1e-5, rtol=1e-5)  # video stream scaled
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=0, rtol=0)  # text stream untouched


def test_eav_needs_grid():
    adapter = WanAdapter.tiny(seed=0)
    x, cond, _ = _inputs(adapter)
    with A.install_attention(adapter, A.AttentionConfig(eav=A.EavConfig(4.0))):
        adapter.attention_state.grid = (1, 1, 1)  # stale grid from other latents
        with pytest.raises(ValueError, match="needs the video token grid"):
            adapter.transformer(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=cond.embeds)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flash_and_triton_cfi_on_cuda():
    from vidpost.kernels import eav as E

    q, k = (torch.randn(2, 9 * 130, 12, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ref = E.cross_frame_intensity_reference(q, k, 9)
    assert E.resolve_impl(None, q) == "triton"
    torch.testing.assert_close(E.cross_frame_intensity_per_sample(q, k, 9), ref, atol=1e-4, rtol=1e-4)
    adapter = WanAdapter.tiny(seed=0).to("cuda", torch.bfloat16)
    x, cond, _ = _inputs(adapter)
    x, cond = x.cuda(), cond.to("cuda")
    v0 = adapter.predict_velocity(x, 0.5, cond)
    with A.install_attention(adapter, A.AttentionConfig("flash")):
        torch.testing.assert_close(adapter.predict_velocity(x, 0.5, cond), v0, atol=3e-2, rtol=3e-2)
