"""Given-frame conditioning (Wan2.2 TI2V's per-token timesteps): the model call, the sampler against stock
diffusers' `WanImageToVideoPipeline` for the first frame, the keyframe sampler, and SFT with a share of clips with a
frame given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
from PIL import Image

from vidpost.config import load_config
from vidpost.evaluation.settings import resolve_settings
from vidpost.models import HunyuanVideoAdapter, WanAdapter, load
from vidpost.models.sampling import denoise, flow_sigmas, initial_noise, sample
from vidpost.pipelines.sft import SFTConfig, TrainConfig, train
from vidpost.training.flow import flow_matching_loss, given_frames

PROMPT = ["a red circle moves to the right"]


def test_given_frames_get_timestep_zero_per_clip():
    a = WanAdapter.tiny(seed=0)
    x = torch.randn(a.latent_shape(2, 9, 32, 32))
    cond, sigma = a.encode_prompt(["a", "b"]), torch.tensor([0.7, 0.4])
    with torch.no_grad():
        plain = a.predict_velocity(x, sigma, cond)
        none_given = a.predict_velocity(x, sigma, cond, given=torch.zeros(2, 3, dtype=torch.bool))
        first_given = a.predict_velocity(x, sigma, cond, given=torch.tensor([[True, False, False], [False] * 3]))
        last_given = a.predict_velocity(x, sigma, cond, given=torch.tensor([False, False, True]))
    torch.testing.assert_close(none_given, plain, atol=1e-5, rtol=0)  # per-token timesteps, all equal
    torch.testing.assert_close(first_given[1], plain[1], atol=1e-5, rtol=0)  # the other clip is untouched
    assert (first_given[0] - plain[0]).abs().max() > 1e-3
    assert (last_given - first_given).abs().amax((1, 2, 3, 4)).min() > 1e-3  # which frame is given matters
    h = HunyuanVideoAdapter.tiny(seed=0)
    xh = torch.randn(h.latent_shape(1, 5, 32, 32))
    with pytest.raises(NotImplementedError, match="given-frame"):
        h.predict_velocity(xh, torch.tensor([0.5]), h.encode_prompt(["a"]), given=torch.tensor([True, False]))


@pytest.mark.parametrize("guidance_scale, steps", [(5.0, 4), (1.0, 3)])
def test_first_frame_sampling_matches_wan_image_to_video_pipeline(tiny_wan_dir, guidance_scale, steps):
    """Our `denoise(given_frame=…)` at index 0 is the stock Wan2.2 TI2V image-to-video loop (expand_timesteps)."""
    adapter = load(tiny_wan_dir)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    pipe = WanImageToVideoPipeline(
        tokenizer=adapter.tokenizer,
        text_encoder=adapter.text_encoder,
        vae=adapter.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=adapter.transformer,
        expand_timesteps=True,
    )
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_frames=9, height=32, width=48, num_inference_steps=steps, guidance_scale=guidance_scale)
    ref = pipe(
        image=image,
        prompt=PROMPT,
        generator=torch.Generator().manual_seed(7),
        output_type="latent",
        max_sequence_length=adapter.max_sequence_length,
        **kw,
    ).frames
    video = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None, :, None]
    first = adapter.encode_video(video)
    noise = initial_noise(adapter.latent_shape(1, 9, 32, 48), seed=7)
    cond = adapter.encode_prompt(PROMPT)
    uncond = adapter.encode_prompt([""]) if guidance_scale > 1 else None
    ours = denoise(
        adapter, noise, flow_sigmas(steps, 3.0, adapter.schedule), cond, uncond, guidance_scale, given_frame=first
    )
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref.float(), atol=2e-5, rtol=0)
    torch.testing.assert_close(ours[:, :, :1], first)
    free = denoise(adapter, noise, flow_sigmas(steps, 3.0, adapter.schedule), cond, uncond, guidance_scale)
    assert (free[:, :, 1:] - ours[:, :, 1:]).abs().max() > 1e-3  # the given frame really conditions the rest


@pytest.mark.parametrize("index", [0, 1])
def test_keyframe_sampler_keeps_that_frame_of_the_plain_sample(tiny_wan_dir, index):
    adapter = load(tiny_wan_dir)
    kw = dict(num_frames=9, height=32, width=32, num_inference_steps=3, guidance_scale=4.0, shift=3.0, seed=2)
    plain = sample(adapter, PROMPT, return_latents=True, **kw)
    keyed = sample(adapter, PROMPT, return_latents=True, keyframe=index, **kw)
    k = slice(index, index + 1)
    torch.testing.assert_close(keyed[:, :, k], plain[:, :, k])
    rest = [i for i in range(plain.shape[2]) if i != index]
    assert (keyed[:, :, rest] - plain[:, :, rest]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="not a latent frame"):
        sample(adapter, PROMPT, keyframe=plain.shape[2], **kw)


def test_keyframe_setting_comes_from_the_flag_or_the_model(tiny_wan_dir, tmp_path):
    import json
    import shutil

    adapter = load(tiny_wan_dir)
    size = dict(num_frames=9, height=32, width=32)
    assert resolve_settings(tiny_wan_dir, adapter, **size, keyframe="2").sample_kwargs()["keyframe"] == 2
    assert "keyframe" not in resolve_settings(tiny_wan_dir, adapter, **size).sample_kwargs()
    model = shutil.copytree(tiny_wan_dir, tmp_path / "m")
    cfg = json.loads((model / "vidpost.json").read_text())
    (model / "vidpost.json").write_text(json.dumps(cfg | {"generation": {"keyframe": 1}}))
    assert resolve_settings(model, adapter, **size).keyframe == 1
    assert resolve_settings(model, adapter, **size, keyframe="off").keyframe is None
    with pytest.raises(ValueError, match="latent frame index"):
        resolve_settings(model, adapter, **size, keyframe="middle")


def test_loss_leaves_out_the_given_frames():
    x0, noise = torch.zeros(2, 1, 3, 1, 1), torch.zeros(2, 1, 3, 1, 1)
    pred = torch.zeros(2, 1, 3, 1, 1)
    pred[:, :, 0] = 2.0  # wrong only on the first frame
    pred[1, :, 2] = 1.0
    w = torch.ones(2)
    torch.testing.assert_close(flow_matching_loss(pred, x0, noise, w), torch.tensor([4 / 3, 5 / 3]))
    given = flow_matching_loss(pred, x0, noise, w, given=torch.tensor([[True, False, False]] * 2))
    torch.testing.assert_close(given, torch.tensor([0.0, 0.5]))
    last = flow_matching_loss(pred, x0, noise, w, given=torch.tensor([[False, False, True]] * 2))
    torch.testing.assert_close(last, torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError, match="given_frame_share"):
        TrainConfig(given_frame_share=1.5)
    mask = given_frames(torch.Generator().manual_seed(0), 1000, 9, TrainConfig(given_frame_share=0.5, given_frame=4))
    assert mask[:, [0, 1, 2, 3, 5, 6, 7, 8]].sum() == 0 and 400 < mask[:, 4].sum() < 600
    assert given_frames(torch.Generator(), 4, 9, TrainConfig()) is None


def test_sft_with_first_frames_given_trains(tiny_wan_dir, tiny_manifest, tmp_path):
    def run(out, share):
        args = {
            "output_dir": str(out),
            "model.path": str(tiny_wan_dir),
            "data.manifest": str(tiny_manifest),
            "data.buckets": "[[9, 32, 32]]",
            "train.batch_size": 4,
            "train.max_steps": 2,
            "checkpoint.every": 0,
            "validation.prompts": "[]",
            "log.tensorboard": "false",
            "lora.enabled": "false",
            "train.given_frame_share": share,
            "train.given_frame": 1,
        }
        return train(load_config(SFTConfig, None, [f"{k}={v}" for k, v in args.items()]))

    plain, keyed = run(tmp_path / "a", 0.0), run(tmp_path / "b", 1.0)
    assert all(np.isfinite(h["loss"]) for h in keyed.history)
    assert keyed.history[0]["loss"] != plain.history[0]["loss"]
