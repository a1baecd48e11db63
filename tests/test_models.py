"""Adapter contract: loading (and its errors), geometry checks, VAE round trip, prompt embeddings."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vidpost.models import HunyuanVideoAdapter, ModelPathError, PromptEmbeds, WanAdapter, load
from vidpost.models.base import read_vidpost_config


def test_load_detects_family(tiny_wan_dir, tiny_hunyuan_dir):
    assert isinstance(load(tiny_wan_dir), WanAdapter)
    assert isinstance(load(tiny_hunyuan_dir), HunyuanVideoAdapter)


def test_saved_layout_is_diffusers_and_safetensors_only(tiny_wan_dir):
    index = json.loads((tiny_wan_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    files = [p.name for p in tiny_wan_dir.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    assert (tiny_wan_dir / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    assert read_vidpost_config(tiny_wan_dir)["family"] == "wan"


def test_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(ModelPathError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(ModelPathError, match="missing model_index.json"):
        load(tmp_path)


def test_incomplete_dir_lists_everything_missing(tiny_wan_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_wan_dir, broken)
    shutil.rmtree(broken / "vae")
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelPathError) as err:
        load(broken)
    msg = str(err.value)
    assert "vae/" in msg and "transformer/*.safetensors" in msg and "text_encoder" not in msg


def test_unsupported_pipeline_class(tiny_wan_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_wan_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelPathError, match="unsupported pipeline class 'StableDiffusionPipeline'"):
        load(other)


def test_missing_preset_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDPOST_ASSETS", str(tmp_path))
    with pytest.raises(ModelPathError, match="shapes-models"):
        load("shapes")
    with pytest.raises(ModelPathError, match="make rl-shapes"):
        load("shapes-rl")


def test_every_preset_is_shipped():
    from vidpost.models import PRESET_SOURCES, PRESETS, resolve_model_path

    assert set(PRESET_SOURCES) == set(PRESETS)
    for name in PRESETS:
        assert (resolve_model_path(name) / "transformer" / "config.json").exists(), name


@pytest.mark.parametrize(
    "frames, h, w, needle",
    [
        (8, 32, 32, "num_frames=8 must be 4k+1 (nearest valid: 5 or 9)"),
        (9, 30, 32, "height=30 must be a multiple of 16"),
        (9, 32, 40, "nearest valid: 32 or 48"),
        (9, 8, 32, "nearest valid: 16)"),
    ],
)
def test_invalid_sizes_name_nearest_valid(frames, h, w, needle):
    a = WanAdapter.tiny()
    with pytest.raises(ValueError) as err:
        a.validate_size(frames, h, w)
    assert needle in str(err.value)


def test_latent_shape_and_grid():
    a = WanAdapter.tiny()
    shape = a.latent_shape(2, 17, 64, 96)
    assert shape == (2, 16, 5, 8, 12)
    assert a.latent_grid(shape) == (5, 4, 6)


@pytest.mark.parametrize("cls", [WanAdapter, HunyuanVideoAdapter])
def test_vae_round_trip_shapes_and_range(cls):
    a = cls.tiny()
    video = torch.rand(2, 3, 9, 32, 32)
    z = a.encode_video(video)
    assert z.shape == a.latent_shape(2, 9, 32, 32)
    assert z.dtype == torch.float32
    out = a.decode(z)
    assert out.shape == video.shape and out.min() >= 0 and out.max() <= 1
    z2 = a.encode_video(video, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(z, z2)  # sampling the posterior differs from its mode


def test_wan_cpu_decode_in_channels_last_matches_the_default_layout():
    from vidpost.models.wan import channels_last

    a = WanAdapter.tiny()
    z = torch.randn(2, *a.latent_shape(1, 9, 32, 32)[1:])
    mean, std = a._latent_norm(z)
    with torch.no_grad():
        reference = (a.vae.decode(z * std + mean, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
        out = a.decode(z)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    convs = [p for p in a.vae.parameters() if p.dim() == 5]
    assert convs and all(p.is_contiguous() for p in a.vae.parameters())  # layout restored: saving still works
    with channels_last(a.vae):
        assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    assert all(p.is_contiguous() for p in convs)


def test_wan_prompt_embeds_zero_padded_and_deterministic():
    a = WanAdapter.tiny()
    e = a.encode_prompt(["a red circle", "a blue square moves to the left"])
    assert e.embeds.shape == (2, a.max_sequence_length, a.text_encoder.config.d_model)
    n_tokens = len(a.tokenizer("a red circle").input_ids)
    assert e.embeds[0, n_tokens:].abs().sum() == 0 and e.embeds[0, :n_tokens].abs().sum() > 0
    torch.testing.assert_close(e.embeds, a.encode_prompt(["a red circle", "a blue square moves to the left"]).embeds)


def test_hunyuan_prompt_embeds_have_mask_and_pooled():
    a = HunyuanVideoAdapter.tiny()
    e = a.encode_prompt(["a red circle"])
    assert e.mask is not None and e.pooled is not None
    assert e.embeds.shape[1] == e.mask.shape[1] == a.max_sequence_length
    assert e.mask[0].sum() == len(a.tokenizer(" a red circle<|eot_id|>", add_special_tokens=False).input_ids)


def test_prompt_embeds_helpers():
    e = PromptEmbeds(embeds=torch.arange(6.0).view(3, 2, 1), mask=torch.ones(3, 2))
    r = e.repeat_interleave(2)
    assert r.batch_size == 6 and torch.equal(r.embeds[1], e.embeds[0]) and r.pooled is None
    c = PromptEmbeds.cat([e, e.index([0])])
    assert c.batch_size == 4 and torch.equal(c.embeds[3], e.embeds[0])


def test_predict_velocity_cfg_combination():
    a = WanAdapter.tiny()
    x = torch.randn(1, 16, 2, 4, 4)
    c, u = a.encode_prompt(["a red circle"]), a.encode_prompt([""])
    vc = a.predict_velocity(x, 0.5, c)
    vu = a.predict_velocity(x, 0.5, u)
    torch.testing.assert_close(a.predict_velocity(x, 0.5, c, u, guidance_scale=4.0), vu + 4.0 * (vc - vu))
    torch.testing.assert_close(a.predict_velocity(x, 0.5, c, u, guidance_scale=1.0), vc)


def test_trainable_parameters_follow_requires_grad():
    a = WanAdapter.tiny()
    assert a.trainable_parameters() == []
    a.transformer.requires_grad_(True)
    assert len(a.trainable_parameters()) == len(list(a.transformer.parameters()))


def test_load_dtype_and_device(tiny_wan_dir):
    a = load(tiny_wan_dir, dtype=torch.bfloat16)
    assert a.dtype == torch.bfloat16 and a.vae.dtype == torch.float32
    assert a.device.type == "cpu"
    assert not any(p.requires_grad for m in a.modules().values() for p in m.parameters())
