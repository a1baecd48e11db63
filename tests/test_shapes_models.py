"""`vidpost shapes models --quick`: the whole build of the embedded default (VAE pretraining, model assembly,
data export, base pretraining and SFT through `vidpost sft`) runs end to end, resumes by skipping finished
stages, and its output is what the `shapes` presets, `make demo` and shapes-eval load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidpost.models import load
from vidpost.pipelines.demo import main as demo
from vidpost.pipelines.shapes_models import main as build
from vidpost.pipelines.shapes_models import shapes_vocabulary


@pytest.fixture(scope="module")
def quick_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes-build")
    assert (
        build(["--out", str(root / "assets" / "shapes"), "--work", str(root / "work"), "--quick", "--clips", "48"])
        == 0
    )
    return root


def test_build_produces_loadable_base_and_sft(quick_assets, monkeypatch):
    monkeypatch.setenv("VIDPOST_ASSETS", str(quick_assets / "assets"))
    base, sft = load("shapes-base"), load("shapes")
    assert base.transformer.config.num_layers == 6 and base.vae.config.z_dim == 4
    assert base.transformer.config.in_channels == base.transformer.config.out_channels == 4
    # the VAE's phases, each started from the one before: 4x temporal, more edges, 2x temporal, 4 channels
    for phase, z_dim in (("vae-t4", 16), ("vae-t4-edge", 16), ("vae-t2", 16), ("vae", 4)):
        assert json.loads((quick_assets / "work" / phase / "config.json").read_text())["z_dim"] == z_dim
    gen = json.loads((quick_assets / "assets" / "shapes" / "sft" / "vidpost.json").read_text())["generation"]
    assert gen == {"num_frames": 17, "height": 64, "width": 64, "steps": 20, "fps": 8}
    diffs = [
        (a - b).abs().max().item()
        for a, b in zip(base.transformer.parameters(), sft.transformer.parameters(), strict=True)
    ]
    assert max(diffs) > 0  # SFT changed the transformer
    # The three SFT phases ran, each from the previous one's weights (the second and third with shifted timesteps,
    # the third with a decaying learning rate), and the last one's result is what shipped.
    motion = json.loads((quick_assets / "work" / "sft-motion" / "config.json").read_text())
    assert motion["train"]["shift"] == 3.0 and motion["model"]["path"].endswith("sft/final")
    third = json.loads((quick_assets / "work" / "sft-motion2" / "config.json").read_text())
    assert third["train"]["shift"] == 3.0 and third["model"]["path"].endswith("sft-motion/final")
    assert third["optim"]["schedule"] == "cosine"
    shipped = quick_assets / "assets" / "shapes" / "sft" / "transformer" / "diffusion_pytorch_model.safetensors"
    last = quick_assets / "work" / "sft-motion2" / "final" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert shipped.read_bytes() == last.read_bytes()
    manifest = (quick_assets / "work" / "data" / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 48 and {"video", "caption", "caption_noisy", "spec"} <= set(json.loads(manifest[0]))
    vae_mean = base.vae.config.latents_mean
    assert len(vae_mean) == 4 and any(m != 0.0 for m in vae_mean)  # measured, not the placeholder


def test_rerun_skips_finished_stages(quick_assets, capsys):
    before = (quick_assets / "assets" / "shapes" / "sft" / "transformer").stat().st_mtime_ns
    assert (
        build(["--out", str(quick_assets / "assets" / "shapes"), "--work", str(quick_assets / "work"), "--quick"]) == 0
    )
    assert (quick_assets / "assets" / "shapes" / "sft" / "transformer").stat().st_mtime_ns == before


def test_finished_sft_phases_are_not_rerun(quick_assets, tmp_path, monkeypatch):
    """A stage whose phases' final/ folders are complete (e.g. copied from a committed model) only reassembles its
    output: no phase trains again."""
    import shutil

    from vidpost.pipelines import shapes_models

    out = tmp_path / "shapes"
    shutil.copytree(quick_assets / "assets" / "shapes" / "base", out / "base")
    monkeypatch.setattr(shapes_models, "run_sft", lambda *a: pytest.fail(f"a finished phase ran again: {a}"))
    assert build(["--out", str(out), "--work", str(quick_assets / "work"), "--quick", "--stage", "sft"]) == 0
    shipped = out / "sft" / "transformer" / "diffusion_pytorch_model.safetensors"
    last = quick_assets / "work" / "sft-motion2" / "final" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert shipped.read_bytes() == last.read_bytes()


def test_a_phase_started_from_another_model_runs_again(quick_assets, tmp_path, monkeypatch):
    """A rebuilt base makes the SFT phases that started from the old one stale: all run again (from the new base,
    then each from the new phase before it), and their old checkpoints are gone."""
    import shutil

    from safetensors.torch import load_file, save_file

    from vidpost.pipelines import shapes_models

    work, out = tmp_path / "work", tmp_path / "shapes"
    shutil.copytree(quick_assets / "work", work)
    shutil.rmtree(work / "pretrain" / "cache")  # its records name the original folder's videos
    shutil.copytree(quick_assets / "assets" / "shapes" / "base", out / "base")
    weights = out / "base" / "transformer" / "diffusion_pytorch_model.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(str(weights)).items()}, str(weights))  # "a rebuilt base"
    assert all((work / phase / "final").exists() for phase in ("sft", "sft-motion", "sft-motion2"))
    ran = []

    def fake_sft(config, overrides):
        opts = dict(o.split("=", 1) for o in overrides)
        ran.append((config.stem, opts["model.path"]))
        assert not (Path(opts["output_dir"]) / "final").exists()  # the stale phase's model was discarded
        shutil.copytree(opts["model.path"], Path(opts["output_dir"]) / "final")
        return Path(opts["output_dir"]) / "final"

    monkeypatch.setattr(shapes_models, "run_sft", fake_sft)
    assert build(["--out", str(out), "--work", str(work), "--quick", "--stage", "sft"]) == 0
    assert ran == [
        ("sft", str(out / "base")),
        ("sft-motion", str(work / "sft" / "final")),
        ("sft-motion2", str(work / "sft-motion" / "final")),
    ]
    assert shapes_models.fingerprint(out / "sft") == shapes_models.fingerprint(out / "base")


def test_a_vae_of_another_architecture_is_refused(quick_assets, tmp_path, capsys):
    work = str(quick_assets / "work")  # holds a 4x2 VAE
    with pytest.raises(SystemExit):
        build(["--out", str(tmp_path / "a"), "--work", work, "--quick", "--vae-temporal", "4"])
    assert "is a (4, 2, 4) VAE, not (4, 4, 4)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build(["--out", str(tmp_path / "a"), "--work", str(tmp_path / "w"), "--vae-from", f"{work}/vae-t4"])
    assert "is a (4, 4, 16) VAE, not (4, 2, 4)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build(["--out", str(tmp_path / "a"), "--work", str(tmp_path / "w"), "--vae-from", f"{work}/vae-t2"])
    assert "is a (4, 2, 16) VAE, not (4, 2, 4)" in capsys.readouterr().err


def test_vae_from_and_a_bad_architecture_are_checked_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build(
            ["--out", str(tmp_path / "a"), "--work", str(tmp_path / "w"), "--vae-spatial", "8", "--vae-temporal", "2"]
        )
    assert "must be one of [(4, 2), (4, 4), (8, 4)]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build(["--out", str(tmp_path / "a"), "--work", str(tmp_path / "w"), "--vae-from", str(tmp_path)])
    assert "no VAE there (config.json missing)" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_demo_uses_the_built_model(quick_assets, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VIDPOST_ASSETS", str(quick_assets / "assets"))
    assert demo(["--out", str(tmp_path), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "generated by 'shapes'" in out and "verifier success:" in out
    assert len(list(tmp_path.glob("*.mp4"))) == 2


def test_vocabulary_covers_captions():
    words = shapes_vocabulary()
    for w in ("red", "circle", "moves", "background", "diamond", "quickly"):
        assert w in words


def test_vae_training_resumes_from_its_checkpoint_to_the_same_weights(tmp_path, monkeypatch):
    """A VAE run killed mid-phase continues from `<out>.state/` (safetensors + JSON, nothing unpickled) and ends with
    the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    from vidpost.pipelines import shapes_vae
    from vidpost.training.checkpoint import read_state

    monkeypatch.setattr(shapes_vae, "_vae_report", lambda vae, seed: (0.0, [], [0.0] * 16, [1.0] * 16))
    monkeypatch.setattr(shapes_vae, "reconstruction_verifier_success", lambda vae: {"success": 0.0})
    kw = {"steps": 3, "image_steps": 3, "sharpen_steps": 2, "batch_size": 1, "image_batch_size": 2, "frames": 5}
    kw["ckpt_every"] = 2
    whole = shapes_vae.train_vae(tmp_path / "whole", **kw)

    real, calls = shapes_vae._render_batch, []

    def dies_in_the_video_phase(*a):
        calls.append(1)
        if len(calls) == 6:  # image steps 1-3, video steps 1-2 (a checkpoint after 2), then video step 3 dies
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(shapes_vae, "_render_batch", dies_in_the_video_phase)
    with pytest.raises(KeyboardInterrupt):
        shapes_vae.train_vae(tmp_path / "cut", **kw)
    assert not (tmp_path / "cut").exists()
    assert read_state(tmp_path / "cut.state", "state")["step"] == 2  # mid-phase: the video phase's step 2
    monkeypatch.setattr(shapes_vae, "_render_batch", real)
    cut = shapes_vae.train_vae(tmp_path / "cut", **kw)
    assert not (tmp_path / "cut.state").exists()
    a = load_file(str(whole / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(cut / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((cut / "config.json").read_text())["scale_factor_spatial"] == 4


@pytest.mark.parametrize(
    ("spatial", "temporal", "latent"), [(4, 4, (5, 16, 16)), (4, 2, (9, 16, 16)), (8, 4, (5, 8, 8))]
)
def test_vae_architectures_compress_as_named(spatial, temporal, latent):
    from vidpost.pipelines.shapes_vae import make_vae

    vae = make_vae(spatial, base_dim=4, temporal=temporal).eval()
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 17, 64, 64)).latent_dist.mode()
        assert tuple(z.shape[2:]) == latent and vae.decode(z).sample.shape == (1, 3, 17, 64, 64)
    assert (vae.config.scale_factor_spatial, vae.config.scale_factor_temporal) == (spatial, temporal)


def test_vae_phases_resume_after_the_latest_finished_one(tmp_path, monkeypatch):
    """`build_vae` trains only the phases after the latest complete folder (e.g. a committed `vae-t2/` copied into
    the work folder), each from the previous phase's weights."""
    from vidpost.pipelines import shapes_models

    calls = []

    def fake_train(out, **kw):
        calls.append((out.name, kw.get("start_from") and kw["start_from"].name, kw.get("z_dim"), kw.get("temporal")))
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(shapes_models, "train_vae", fake_train)
    kw = {"spatial": 4, "temporal": 2, "steps": 1, "image_steps": 1, "sharpen_steps": 1}
    (tmp_path / "a" / "vae-t2").mkdir(parents=True)
    (tmp_path / "a" / "vae-t2" / "config.json").write_text("{}")
    assert shapes_models.build_vae(tmp_path / "a", channels=4, **kw) == tmp_path / "a" / "vae"
    assert calls == [("vae", "vae-t2", 4, 2)]
    calls.clear()
    shapes_models.build_vae(tmp_path / "b", channels=16, **kw)
    assert calls == [("vae-t4", None, None, None), ("vae-t4-edge", "vae-t4", 16, 4), ("vae", "vae-t4-edge", 16, 2)]


def test_narrowed_latents_are_the_principal_components_of_the_wide_ones():
    """`narrow_latents` with as many channels reproduces the wide VAE; with fewer, the narrowed encoder's latents
    on the clips it was fitted on are the wide latents' leading principal components (uncorrelated, in decreasing
    variance, centred)."""
    import numpy as np

    from vidpost.pipelines.shapes_vae import NUM_FRAMES, _render_batch, load_matching, make_vae, narrow_latents

    torch.manual_seed(0)
    wide = make_vae(4, base_dim=4, temporal=2, z_dim=8).eval()
    x = _render_batch(np.random.default_rng([3, 99]), 8, NUM_FRAMES) * 2 - 1  # the clips narrow_latents fits on
    with torch.no_grad():
        for k in (8, 3):
            narrow = make_vae(4, base_dim=4, temporal=2, z_dim=k).eval()
            load_matching(narrow, wide)
            narrow_latents(narrow, wide, seed=3, n=8)
            z = narrow.encode(x).latent_dist.mode()
            assert z.shape[1] == k
            if k == 8:
                ref = wide.decode(wide.encode(x).latent_dist.mode()).sample
                torch.testing.assert_close(narrow.decode(z).sample, ref, atol=1e-4, rtol=0)
            else:
                flat = z.transpose(0, 1).flatten(1)
                cov = torch.cov(flat)
                var = cov.diagonal()
                assert torch.all(var[:-1] >= var[1:]) and var[-1] > 0
                off = cov - torch.diag(var)
                assert off.abs().max() < 1e-3 * var[0]
                assert flat.mean(1).abs().max() < 1e-3 * var[0].sqrt()  # centred on the wide latents' mean
