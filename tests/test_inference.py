"""Inference settings (`models/inference.py`): config validation, diffusers step caches wired into our sampler
(cache state per CFG branch, reset per generation, removal restores), the "fp8_sparse" attention implementation
through the processors (reference path on the CPU), `torch.compile` (slow)."""

from __future__ import annotations

import math

import pytest
import torch

from vidpost.config import from_dict
from vidpost.models import WanAdapter
from vidpost.models import attention as A
from vidpost.models.inference import InferenceConfig, apply_inference
from vidpost.models.sampling import sample

KW = dict(num_frames=9, height=32, width=32, num_inference_steps=8, guidance_scale=5.0, shift=3.0, seed=3)
PROMPTS = ["a red circle moves to the right", "a blue square moves up"]


@pytest.fixture(scope="module")
def adapter():
    return WanAdapter.tiny(seed=0, num_layers=3)


@pytest.fixture(scope="module")
def baseline(adapter):
    return sample(adapter, PROMPTS, **KW)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="unknown cache method 'lru'"):
        InferenceConfig.from_dict({"cache": {"method": "lru"}})
    with pytest.raises(ValueError, match="inference.cahce"):
        InferenceConfig.from_dict({"cahce": {}})
    with pytest.raises(ValueError, match="inference.cache.treshold"):
        InferenceConfig.from_dict({"cache": {"method": "first_block", "treshold": 0.1}})
    with pytest.raises(ValueError, match="cache.options for taylorseer"):
        InferenceConfig.from_dict({"cache": {"method": "taylorseer", "options": {"interval": 3}}})
    with pytest.raises(ValueError, match="inference.attention.eav.wieght"):
        InferenceConfig.from_dict({"attention": {"eav": {"wieght": 2}}})
    with pytest.raises(ValueError, match="inference.compile"):
        InferenceConfig.from_dict({"compile": 1})
    cfg = InferenceConfig.from_dict({"attention": {"eav": {"weight": 2, "layer_weights": {"1": 0}}}})
    assert cfg.cache.method == "none" and cfg.compile is False
    assert cfg.attention == A.AttentionConfig(eav=A.EavConfig(weight=2.0, layer_weights={1: 0.0}))
    # typed all the way down: the same settings as a nested config section, and {} / null mean no attention change
    assert from_dict(InferenceConfig, {"attention": {"eav": {"weight": 2, "layer_weights": {1: 0}}}}) == cfg
    assert InferenceConfig.from_dict({"attention": {}}).attention is None
    assert InferenceConfig.from_dict(None) == InferenceConfig()


@pytest.mark.parametrize(
    "settings",
    [
        {"cache": {"method": "first_block", "threshold": 10.0}},
        {"cache": {"method": "taylorseer", "options": {"cache_interval": 2, "disable_cache_before_step": 2}}},
    ],
    ids=["first_block", "taylorseer"],
)
def test_step_caches_act_reset_per_generation_and_remove(adapter, baseline, settings):
    handle = apply_inference(adapter, settings, num_inference_steps=KW["num_inference_steps"])
    first = sample(adapter, PROMPTS, **KW)
    again = sample(adapter, PROMPTS, **KW)  # the cache state of the last generation must not leak in
    handle.remove()
    assert not torch.equal(first, baseline)  # steps were skipped / forecast
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    torch.testing.assert_close(sample(adapter, PROMPTS, **KW), baseline, atol=0, rtol=0)


def test_first_block_cache_with_zero_threshold_changes_nothing(adapter, baseline):
    handle = apply_inference(adapter, {"cache": {"method": "first_block", "threshold": 0.0}})
    out = sample(adapter, PROMPTS, **KW)
    handle.remove()
    torch.testing.assert_close(out, baseline, atol=1e-6, rtol=0)


def test_attention_settings_install_and_remove(adapter, baseline):
    handle = apply_inference(adapter, {"attention": {"implementation": "sdpa"}})
    assert all(
        isinstance(attn.processor, A._VideoAttnProcessor) for _, attn, _ in A.attention_sites(adapter.transformer)
    )
    torch.testing.assert_close(sample(adapter, PROMPTS, **KW), baseline, atol=1e-5, rtol=0)
    handle.remove()
    assert not any(isinstance(b.attn1.processor, A._VideoAttnProcessor) for b in adapter.transformer.blocks)


def test_fp8_sparse_unquantised_dense_equals_sdpa(adapter, baseline):
    cfg = A.AttentionConfig("fp8_sparse", options={"tile": [1, 2, 2], "quant": "bf16", "backend": "reference"})
    with A.install_attention(adapter, cfg):
        out = sample(adapter, PROMPTS, **KW)
    torch.testing.assert_close(out, baseline, atol=2e-5, rtol=0)


def test_fp8_sparse_schedule_follows_the_denoising_step(adapter, baseline, monkeypatch):
    from vidpost.kernels import attention_schedule

    seen = []
    plan = attention_schedule.AttentionSchedule.plan

    def spy(self, step, num_steps, layer):
        p = plan(self, step, num_steps, layer)
        seen.append((step, num_steps, layer, p.dense))
        return p

    monkeypatch.setattr(attention_schedule.AttentionSchedule, "plan", spy)
    schedule = {"rules": [{"steps": [0.0, 0.25], "dense": True}, {"steps": [0.25, 1.0], "window": [0, 1, 1]}]}
    options = {"tile": [1, 2, 2], "quant": "fp8", "schedule": schedule}
    with A.force_reference(), A.install_attention(adapter, A.AttentionConfig("fp8_sparse", options=options)) as h:
        assert {p.impl.backend for p in h.processors} == {"reference"}
        out = sample(adapter, PROMPTS, **KW)
    n = KW["num_inference_steps"]
    # every (step, layer) was planned with the sampler's step; the first quarter dense, the rest windowed
    assert {(s, layer) for s, _, layer, _ in seen} == {(s, i) for s in range(n) for i in range(3)}
    assert all(num == n for _, num, _, _ in seen)
    assert all(dense == (s < n // 4) for s, _, _, dense in seen)
    assert not torch.equal(out, baseline) and psnr(out, baseline) > 20


@pytest.mark.slow
def test_compile_matches_eager(adapter, baseline):
    handle = apply_inference(adapter, {"compile": True})
    out = sample(adapter, PROMPTS, **KW)
    handle.remove()
    torch.testing.assert_close(out, baseline, atol=1e-4, rtol=0)
    assert adapter.transformer._compiled_call_impl is None
