"""generate.py end to end on a saved miniature: mp4 + contact sheet + settings, batches, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vidpost.media.video_io import probe_video, read_video
from vidpost.models import load
from vidpost.models.sampling import sample
from vidpost.pipelines.generate import main

ROOT = Path(__file__).resolve().parents[1]
SIZE = ["--num-frames", "9", "--height", "32", "--width", "32", "--steps", "3", "--no-progress"]


def test_single_prompt_writes_mp4_sheet_and_settings(tiny_wan_dir, tmp_path):
    out = tmp_path / "red.mp4"
    rc = main(["--prompt", "a red circle moves to the right", "--model", str(tiny_wan_dir), "--out", str(out), *SIZE])
    assert rc == 0
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width) == (9, 32, 32)
    sheet = Image.open(out.with_suffix(".png"))
    assert sheet.width >= 32 * 8 and sheet.height > 32
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["prompt"] == "a red circle moves to the right" and meta["num_inference_steps"] == 3
    # The written video is the sampler's output (up to H.264 compression).
    adapter = load(tiny_wan_dir)
    kw = dict(
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=3,
        guidance_scale=adapter.default_guidance_scale,
        shift=adapter.default_shift,
    )
    ref = sample(adapter, ["a red circle moves to the right"], seed=0, **kw)[0]
    other = sample(adapter, ["a red circle moves to the right"], seed=1, **kw)[0]
    got = read_video(out)
    assert got.shape == ref.shape
    # A random model's output is colour noise that yuv420p chroma subsampling blurs; luma survives H.264 closely.
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)
    err = ((got - ref) * luma).sum(0).abs().mean()
    assert err < 0.02 and err < 0.25 * ((got - other) * luma).sum(0).abs().mean()


def test_prompts_file_batches_are_independent_of_batch_size(tiny_wan_dir, tmp_path):
    pf = tmp_path / "prompts.txt"
    pf.write_text("# comment\na red circle moves to the right\n\na blue square moves up\na green triangle\n")
    rc = main(["--prompts-file", str(pf), "--model", str(tiny_wan_dir), "--out", str(tmp_path / "a"), *SIZE])
    assert rc == 0
    files = sorted((tmp_path / "a").glob("*.mp4"))
    assert [f.name[:4] for f in files] == ["000_", "001_", "002_"]
    assert (tmp_path / "a" / "contact_sheet.png").exists()
    rc = main(
        ["--prompts-file", str(pf), "--model", str(tiny_wan_dir), "--out", str(tmp_path / "b"), "--batch-size", "1"]
        + SIZE
    )
    assert rc == 0
    for f in files:  # same seed per prompt whatever the batch: equal up to float reassociation and the codec
        a, b = read_video(f), read_video(tmp_path / "b" / f.name)
        assert (a - b).abs().mean() < 2e-3


def test_invalid_size_is_a_clear_error(tiny_wan_dir, tmp_path, capsys):
    rc = main(
        ["--prompt", "x", "--model", str(tiny_wan_dir), "--out", str(tmp_path / "x.mp4")]
        + SIZE[:2]
        + ["--num-frames", "10"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "num_frames=10 must be 4k+1 (nearest valid: 9 or 13)" in err
    assert not (tmp_path / "x.mp4").exists()


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    rc = main(["--prompt", "x", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x.mp4")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


def test_script_entry_point_runs(tiny_hunyuan_dir, tmp_path):
    out = tmp_path / "h.mp4"
    cmd = [sys.executable, str(ROOT / "generate.py"), "--prompt", "a red circle", "--model", str(tiny_hunyuan_dir)]
    res = subprocess.run(cmd + ["--out", str(out), *SIZE], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert probe_video(out).num_frames == 9


def test_sampler_batch_independence_with_per_prompt_noise(tiny_wan_dir):
    from vidpost.models.sampling import initial_noise

    adapter = load(tiny_wan_dir)
    kw = dict(num_frames=5, height=32, width=32, num_inference_steps=2, guidance_scale=3.0, shift=3.0, seed=0)
    shape = adapter.latent_shape(1, 5, 32, 32)
    noise = torch.cat([initial_noise(shape, seed=s) for s in (10, 11)])
    both = sample(adapter, ["a red circle", "a blue square"], latents=noise, return_latents=True, **kw)
    alone = sample(adapter, ["a blue square"], latents=noise[1:], return_latents=True, **kw)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)


def test_attention_flags_and_config_file(tiny_wan_dir, tmp_path):
    from vidpost.pipelines.generate import attention_config, build_parser

    def cfg(*argv):
        return attention_config(build_parser().parse_args(["--prompt", "x", *argv]))

    assert cfg() is None
    c = cfg("--attention", "flash", "--attention-layers", "0,1", "--eav", "4", "--eav-steps", "2:")
    assert (c.implementation, c.layers) == ("flash", [0, 1])
    assert (c.eav.weight, c.eav.step_start, c.eav.step_end) == (4.0, 2, None)
    yml = tmp_path / "attn.yaml"
    yml.write_text("attention:\n  eav:\n    weight: 2\n    branches: [cond]\n    layer_weights: {1: 0}\n")
    c = cfg("--attention-config", str(yml), "--eav-layers", "1")
    assert c.implementation == "sdpa" and c.eav.branches == ["cond"]
    assert c.eav.layers == [1] and c.eav.layer_weights == {1: 0.0}
    yml.write_text("attention:\n  eav:\n    wieght: 2\n")
    with pytest.raises(ValueError, match="attention.eav.wieght"):
        cfg("--attention-config", str(yml))
    out = tmp_path / "eav.mp4"
    argv = ["--prompt", "a red circle", "--model", str(tiny_wan_dir), "--out", str(out), *SIZE]
    assert main([*argv, "--eav", "4", "--eav-branches", "cond", "--attention-layers", "0"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["attention"]["eav"]["weight"] == 4.0 and meta["attention"]["layers"] == [0]
    assert main([*argv, "--attention", "nope"]) == 2


def test_cache_and_compile_flags(tiny_wan_dir, tmp_path):
    from vidpost.pipelines.generate import build_parser, inference_settings

    def settings(*argv):
        return inference_settings(build_parser().parse_args(["--prompt", "x", *argv]))

    assert settings() == {} and settings("--cache", "none") == {}
    assert settings("--cache", "first_block", "--cache-threshold", "0.2", "--compile") == {
        "cache": {"method": "first_block", "threshold": 0.2},
        "compile": True,
    }
    out = tmp_path / "cached.mp4"
    argv = ["--prompt", "a red circle", "--model", str(tiny_wan_dir), "--out", str(out), *SIZE]
    assert main([*argv, "--cache", "taylorseer"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["inference"] == {"cache": {"method": "taylorseer"}}
