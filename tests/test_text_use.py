"""`experiments/text_use.py`: the loss with the true caption vs a changed one, per noise level."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from text_use import REVERSE, change, text_use

from vidpost.models import WanAdapter


def test_change_reverses_every_direction_and_skips_still_scenes():
    spec = {
        "objects": [
            {"shape": "circle", "colour": "red", "direction": "up-left", "speed": "fast", "size": "small"},
            {"shape": "square", "colour": "blue", "direction": "right", "speed": "slow", "size": "large"},
        ],
        "background": "black",
    }
    out = change(spec, "direction")
    assert [o["direction"] for o in out["objects"]] == ["down-right", "left"]
    assert spec["objects"][0]["direction"] == "up-left"  # the input is left alone
    assert all(REVERSE[REVERSE[d]] == d for d in REVERSE)
    spec["objects"][1]["direction"] = "still"
    assert change(spec, "direction") is None
    colours = [o["colour"] for o in change(spec, "colour")["objects"]]
    assert len(set(colours)) == 2 and not {"red", "blue"} & set(colours)
    with pytest.raises(ValueError, match="unknown attribute"):
        change(spec, "speed")


class _Oracle:
    """Predicts 0.9 × the true velocity for the true captions and 0.5 × it for the changed ones."""

    def __init__(self, latents: torch.Tensor, true: list[str]):
        self.latents, self.true = latents, true

    def encode_prompt(self, texts):
        return SimpleNamespace(is_true=torch.tensor([t in self.true for t in texts]))

    def forward_transformer(self, xt, sigma, cond, guidance):
        s = sigma.view(-1, 1, 1, 1, 1)
        target = (xt - (1 - s) * self.latents) / s - self.latents  # eps - x0
        scale = torch.where(cond.is_true, 0.9, 0.5).view(-1, 1, 1, 1, 1)
        return scale * target


def test_text_use_measures_the_gap_and_the_preference():
    latents = torch.randn(3, 4, 2, 4, 4)
    true = ["a red circle moves up", "a blue square moves left", "a cyan diamond moves down"]
    rows = text_use(_Oracle(latents, true), latents, true, ["x", "y", "z"], sigmas=(0.3, 0.9))
    assert [r["sigma"] for r in rows] == [0.3, 0.9]
    for r in rows:  # losses 0.01·|t|² vs 0.25·|t|²: a relative gap of 24
        assert r["gap"] == pytest.approx(24.0, rel=1e-4)
        assert r["prefers_true"] == 1.0
        assert r["loss_changed"] == pytest.approx(25 * r["loss_true"], rel=1e-4)


def test_identical_captions_give_no_gap_and_different_ones_do():
    adapter = WanAdapter.tiny(0, latent_channels=4, patch_size=(1, 2, 2))
    latents = torch.randn(2, 4, 2, 4, 4)
    same = text_use(adapter, latents, ["a red circle", "a blue square"], ["a red circle", "a blue square"])
    assert all(r["gap"] == 0.0 and r["prefers_true"] == 0.0 for r in same)
    other = text_use(adapter, latents, ["a red circle", "a blue square"], ["a green triangle", "a cyan diamond"])
    assert any(r["gap"] != 0.0 for r in other)
