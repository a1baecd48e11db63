"""The Shapes evaluation command, SFT validation with the verifier, and the demo's fallback, on a miniature."""

from __future__ import annotations

import json

import pytest

from vidpost.evaluation.shapes import ATTRIBUTES, evaluate_model, markdown_table
from vidpost.evaluation.stats import wilson
from vidpost.pipelines.shapes_eval import main
from vidpost.shapes.splits import heldout_prompts


def test_wilson_interval_hand_worked():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson(0, 0) == (0.0, 0.0)


def test_evaluate_model_on_a_miniature(tiny_wan_dir):
    items = heldout_prompts()[:3]
    r = evaluate_model(str(tiny_wan_dir), items, seeds=2, steps=2, num_frames=17, height=64, width=64)
    assert r["n"] == 6 and len(r["records"]) == 6 and len(r["videos"]) == 3
    assert 0.0 <= r["success"] <= 1.0 and r["ci95"][0] <= r["success"] <= r["ci95"][1]
    for a in ATTRIBUTES:
        assert 0.0 <= r[a] <= 1.0
    # A random model does not draw the prompted scenes.
    assert r["success"] == 0.0
    assert "| " + str(tiny_wan_dir) in markdown_table([r])


def test_shapes_eval_command_writes_results(tiny_wan_dir, tmp_path):
    args = ["--models", str(tiny_wan_dir), "--limit", "2", "--seeds", "1", "--steps", "2", "--out", str(tmp_path)]
    rc = main(args + ["--frames", "17", "--height", "64", "--width", "64"])
    assert rc == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(rows) == 1 and len(rows[0]["success"]) == 2 and "videos" not in rows[0]
    assert rows[0]["steps"] == 2 and set(rows[0]["attributes"]) >= {"direction", "colour"}
    table = (tmp_path / "table.md").read_text()
    assert f"| {tiny_wan_dir} | 2 |" in table and "| direction |" in table
    assert (tmp_path / "grid.png").exists()


def test_sft_validation_scores_with_the_verifier_on_the_evaluation_cores_seeds(tiny_wan_dir, tmp_path):

    from vidpost.evaluation.generate import sample_batches
    from vidpost.evaluation.settings import GenerationSettings
    from vidpost.evaluation.validation import ValidationConfig, run_validation, validation_prompts
    from vidpost.media.video_io import read_video, write_video
    from vidpost.models import load

    adapter = load(tiny_wan_dir)
    cfg = ValidationConfig(prompts="shapes-heldout", max_prompts=2, steps=2, seed=3)
    m = run_validation(adapter, cfg, (9, 32, 32), tmp_path, step=5)
    assert set(m) == {f"verifier/{k}" for k in ("success", *ATTRIBUTES)}
    folder = tmp_path / "validation" / "step_0000005"
    assert (folder / "contact_sheet.png").exists() and len(list(folder.glob("*.mp4"))) == 2
    # the videos are the evaluation core's for the same prompts: prompt i from seed 3 + i, one at a time
    prompts, _ = validation_prompts(cfg)
    settings = GenerationSettings(9, 32, 32, steps=2, guidance=5.0, shift=adapter.default_shift, fps=8)
    _, alone, _ = next(sample_batches(adapter, prompts[1:], [4], settings, batch_size=1))
    write_video(tmp_path / "alone.mp4", alone[0], fps=8)
    a, b = read_video(folder / "01.mp4"), read_video(tmp_path / "alone.mp4")
    assert a.shape == b.shape and (a.float() - b.float()).abs().max() <= 4 / 255 + 1e-6
    _, other, _ = next(sample_batches(adapter, prompts[1:], [5], settings, batch_size=1))  # another seed differs
    write_video(tmp_path / "other.mp4", other[0], fps=8)
    assert (read_video(tmp_path / "other.mp4").float() - a.float()).abs().max() > 8 / 255


def test_demo_falls_back_to_ground_truth_without_assets(monkeypatch, tmp_path, capsys):
    from vidpost.pipelines.demo import main as demo

    monkeypatch.setenv("VIDPOST_ASSETS", str(tmp_path / "no-assets"))
    assert demo(["--out", str(tmp_path / "demo"), "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert "make shapes-models" in out and "verifier success: 3/3" in out
    assert (tmp_path / "demo" / "contact_sheet.png").exists()


def test_verify_rows_accepts_ground_truth_and_rejects_a_mismatch():
    """The table's success column is the verifier's: rendered ground truth passes, the same clips under another
    scene's caption do not (a verifier that always says no, or always yes, fails this)."""
    import numpy as np
    import torch

    from vidpost.evaluation.shapes import verify_rows
    from vidpost.shapes.world import SceneSpec, render

    items = heldout_prompts()[:4]
    videos = torch.from_numpy(np.stack([render(SceneSpec.from_dict(it["spec"]), seed=it["seed"]) for it in items]))
    specs = [it["spec"] for it in items]
    assert all(r["success"] for r in verify_rows(videos, specs))
    shifted = specs[1:] + specs[:1]
    assert not any(r["success"] for r in verify_rows(videos, shifted))
