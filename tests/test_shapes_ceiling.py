"""`vidpost shapes ceiling`: the verifier on held-out ground truth, on a VAE's reconstructions of it, and on
one-attribute mutations of both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidpost.pipelines.shapes import main
from vidpost.shapes.verifier import ATTRIBUTES

SHIPPED_VAE = Path(__file__).resolve().parents[1] / "assets" / "shapes" / "sft" / "vae"


def test_a_random_vae_is_a_low_ceiling_and_the_ground_truth_passes(tiny_wan_dir, capsys):
    assert main(["ceiling", "--model", str(tiny_wan_dir), "--limit", "3", "--mutations", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["n_clips"], r["n_mutations"]) == (3, 6)
    assert r["ground_truth_success"] == 1.0  # the verifier accepts rendered ground truth
    assert r["reconstruction_success"] == 0.0  # a random VAE's output shows nothing
    assert r["false_success_ground_truth"] == 0.0  # and rejects every clip that contradicts its caption
    assert r["false_success"] == max(r["false_success_ground_truth"], r["false_success_reconstruction"])
    assert set(r["per_attribute"]) == set(ATTRIBUTES)
    assert sum(v["n"] for v in r["false_success_by_mutation"].values()) == 6


@pytest.mark.skipif(not SHIPPED_VAE.exists(), reason="the shipped Shapes model is not in this checkout")
def test_a_vae_folder_is_measured_and_printed_as_a_table(capsys):
    assert main(["ceiling", "--model", str(SHIPPED_VAE), "--limit", "2", "--mutations", "1"]) == 0
    out = capsys.readouterr().out
    assert "Shapes ruler on 2 held-out clips (17x64x64)" in out and "false success (2 mutations)" in out
    assert out.splitlines()[2].split()[:2] == ["success", "1.000"]


def test_headroom_counts_best_of_k_and_the_round_trip_on_a_known_answer(monkeypatch, tiny_wan_dir, tmp_path):
    """3 prompts × 4 seeds with a chosen success pattern: the mean, best-of-k, headroom and round-trip figures are
    exactly what the pattern implies; only successful videos make the round trip, each to its own mp4 file."""
    import torch

    from vidpost.evaluation import headroom as hr

    pattern = [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1]]  # prompt × seed; 4 of 12 succeed, 2 of 3 prompts ever

    def fake_sample_and_verify(adapter, settings, items, texts, *, seeds, batch_size):
        for k in range(seeds):
            videos = torch.full((len(items), 3, 5, 16, 16), float(k) / 4)
            rows = [{"success": bool(pattern[i][k]), "score": 0.5 + 0.1 * pattern[i][k]} for i in range(len(items))]
            yield k, list(range(len(items))), [0] * len(items), videos, rows

    tripped: list[str] = []

    def fake_round_trip(adapter, videos, folder, names):
        tripped.extend(names)
        return videos

    # a round-tripped video keeps its success unless it is seed 3's
    monkeypatch.setattr("vidpost.evaluation.shapes.sample_and_verify", fake_sample_and_verify)
    monkeypatch.setattr(hr, "round_trip", fake_round_trip)
    monkeypatch.setattr(
        "vidpost.evaluation.shapes.verify_rows",
        lambda videos, specs: [{"success": float(v.flatten()[0]) != 0.75} for v in videos],
    )
    r = hr.shapes_headroom(str(tiny_wan_dir), seeds=4, limit=3, out=tmp_path)
    assert r["mean_success"] == pytest.approx(4 / 12)
    assert r["best_of_k_success"] == pytest.approx(2 / 3)
    assert r["headroom"] == pytest.approx(100 * (2 / 3 - 4 / 12))
    assert r["mean_graded"] == pytest.approx(0.5 + 0.1 * 4 / 12)
    assert r["best_of_k_graded"] == pytest.approx((0.6 + 0.5 + 0.6) / 3)
    assert r["n_successful"] == 4 and len(tripped) == 4
    assert r["round_trip_kept"] == pytest.approx(3 / 4)  # prompt 2's seed-3 success did not survive
    assert json.loads((tmp_path / "headroom.json").read_text())["n_successful"] == 4


def test_round_trip_writes_one_mp4_per_video_and_returns_decoded_clips(tiny_wan_dir, tmp_path):
    import torch

    from vidpost.evaluation.headroom import round_trip
    from vidpost.models import load

    adapter = load(str(tiny_wan_dir))
    videos = torch.rand(2, 3, 5, 32, 32)
    out = round_trip(adapter, videos, tmp_path, ["a_0", "b_1"])
    assert out.shape == videos.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["a_0.mp4", "b_1.mp4"]


def test_headroom_refuses_bad_counts_and_a_missing_model_in_one_line(capsys):
    for args in (["--seeds", "1"], ["--limit", "0"]):
        with pytest.raises(SystemExit) as e:
            main(["headroom", *args])
        assert e.value.code == 2
        assert f"argument {args[0]}: must be at least" in capsys.readouterr().err
    assert main(["headroom", "--model", "no/such/model"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("vidpost shapes headroom: error: model path no/such/model does not exist") and "\n" not in err
    )
