"""`vidpost shapes ceiling`: the verifier on held-out ground truth, on a VAE's reconstructions of it, and on
one-attribute mutations of both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidpost.shapes.cli import main
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
