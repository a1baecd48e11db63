"""Our ODE sampler reproduces the stock diffusers pipelines for the same components, seed and settings."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

from vidpost.models import HunyuanVideoAdapter, WanAdapter, load
from vidpost.models.sampling import flow_sigmas, sample

PROMPTS = ["a red circle moves to the right", "a blue square moves up on a white background"]


def _wan_reference(adapter: WanAdapter, prompts, *, shift, seed, **kw) -> torch.Tensor:
    pipe = adapter.pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompts,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        max_sequence_length=adapter.max_sequence_length,
        **kw,
    ).frames
    return out.permute(0, 2, 1, 3, 4)  # [B, T, C, H, W] -> [B, C, T, H, W]


@pytest.mark.parametrize("guidance_scale, steps, shift", [(5.0, 4, 3.0), (1.0, 3, 1.0), (3.5, 6, 5.0)])
def test_wan_matches_wanpipeline(tiny_wan_dir, guidance_scale, steps, shift):
    adapter = load(tiny_wan_dir)
    kw = dict(num_frames=9, height=32, width=48, num_inference_steps=steps, guidance_scale=guidance_scale)
    ours = sample(adapter, PROMPTS, shift=shift, seed=7, **kw)
    ref = _wan_reference(adapter, PROMPTS, shift=shift, seed=7, **kw)
    assert ours.shape == ref.shape == (2, 3, 9, 32, 48)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=0)
    assert ours.std() > 0.01  # not a constant image that would match trivially


def test_wan_negative_prompt_matches(tiny_wan_dir):
    adapter = load(tiny_wan_dir)
    kw = dict(num_frames=5, height=32, width=32, num_inference_steps=3, guidance_scale=4.0)
    ours = sample(adapter, PROMPTS[:1], shift=3.0, seed=1, negative_prompt="blurry still", **kw)
    ref = _wan_reference(adapter, PROMPTS[:1], shift=3.0, seed=1, negative_prompt="blurry still", **kw)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=0)
    plain = sample(adapter, PROMPTS[:1], shift=3.0, seed=1, **kw)
    assert (plain - ours).abs().max() > 1e-4  # the negative prompt really changes the result


def test_wan22_two_transformers_match(tmp_path):
    """Wan2.2 A14B layout: transformer_2 denoises below the boundary; saved, reloaded, compared to the pipeline."""
    a = WanAdapter.tiny(seed=0)
    torch.manual_seed(1)
    a.transformer_2 = WanTransformer3DModel(**a.transformer.config).eval().requires_grad_(False)
    a.boundary_ratio = 0.6
    a.save_pretrained(tmp_path / "wan22")
    b = load(tmp_path / "wan22")
    assert b.transformer_2 is not None and b.boundary_ratio == pytest.approx(0.6)
    kw = dict(num_frames=5, height=32, width=32, num_inference_steps=5, guidance_scale=3.0)
    ours = sample(b, PROMPTS, shift=2.0, seed=3, **kw)
    ref = _wan_reference(b, PROMPTS, shift=2.0, seed=3, **kw)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=0)
    b.transformer_2 = None  # a single transformer gives a different video: the second one was really used
    assert (sample(b, PROMPTS, shift=2.0, seed=3, **kw) - ours).abs().max() > 1e-4


@pytest.mark.parametrize("true_cfg", [1.0, 3.0])
def test_hunyuan_matches_hunyuanvideopipeline(tiny_hunyuan_dir, true_cfg):
    adapter = load(tiny_hunyuan_dir)
    assert isinstance(adapter, HunyuanVideoAdapter)
    adapter.true_cfg_scale = true_cfg
    neg = "blurry" if true_cfg > 1 else None
    kw = dict(num_frames=9, height=32, width=32, num_inference_steps=4)
    ours = sample(adapter, PROMPTS, guidance_scale=6.0, shift=7.0, seed=5, negative_prompt=neg, **kw)
    pipe = adapter.pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        PROMPTS,
        negative_prompt=[neg] * 2 if neg else None,
        true_cfg_scale=true_cfg,
        guidance_scale=6.0,
        generator=torch.Generator().manual_seed(5),
        output_type="pt",
        prompt_template=adapter.prompt_template,
        max_sequence_length=adapter.max_sequence_length,
        **kw,
    ).frames.permute(0, 2, 1, 3, 4)
    assert ours.shape == ref.shape == (2, 3, 9, 32, 32)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=0)
    assert ours.std() > 0.01


@pytest.mark.parametrize("schedule", ["diffusers", "uniform"])
@pytest.mark.parametrize("steps, shift", [(1, 1.0), (4, 3.0), (50, 5.0), (7, 0.5)])
def test_flow_sigmas_match_diffusers_scheduler(schedule, steps, shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    if schedule == "diffusers":
        sched.set_timesteps(steps)
    else:
        import numpy as np

        sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    ours = flow_sigmas(steps, shift, schedule)
    torch.testing.assert_close(ours, sched.sigmas.float(), atol=1e-7, rtol=0)


def test_uniform_schedule_is_the_design_formula():
    # sigma_i = shift*s/(1+(shift-1)*s), s = linspace(1, 0, N+1): hand-worked for N=2, shift=3: s = 1, .5, 0
    torch.testing.assert_close(flow_sigmas(2, 3.0, "uniform"), torch.tensor([1.0, 0.75, 0.0]))
