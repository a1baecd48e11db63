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
    results = json.loads((tmp_path / "results.json").read_text())
    assert results[0]["n"] == 2 and "videos" not in results[0]
    assert (tmp_path / "results.md").read_text().count("\n") == 3
    assert len(list(tmp_path.glob("*.png"))) == 1


def test_sft_validation_scores_with_the_verifier(tiny_wan_dir, tmp_path):
    from vidpost.media.data import Bucket
    from vidpost.models import load
    from vidpost.pipelines.sft import ValidationConfig, run_validation

    cfg = ValidationConfig(prompts="shapes-heldout", max_prompts=2, steps=2)
    m = run_validation(load(tiny_wan_dir), cfg, Bucket(9, 32, 32), tmp_path, step=5)
    assert set(m) == {f"verifier/{k}" for k in ("success", *ATTRIBUTES)}
    folder = tmp_path / "validation" / "step_0000005"
    assert (folder / "contact_sheet.png").exists() and len(list(folder.glob("*.mp4"))) == 2


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
