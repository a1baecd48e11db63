"""`experiments/motion_control.py`: the synthetic moving-blob world and its reading."""

from __future__ import annotations

import pytest
import torch
from motion_control import NAMES, REVERSED, bayes_losses, captions, clips, read_directions, run


@pytest.mark.parametrize("start", ["inside", "free"])
def test_the_reading_of_the_training_clips_is_right(start):
    asked = [i % 4 for i in range(64)]
    accuracy, moved = read_directions(clips(asked, torch.Generator().manual_seed(0), start), asked)
    assert accuracy >= 0.95
    assert 6.0 <= moved <= 8.5  # one cell per latent frame, 8 over the clip


def test_reversed_clips_read_as_the_opposite_direction():
    asked = [i % 4 for i in range(32)]
    x = clips(asked, torch.Generator().manual_seed(1))
    opposite = [REVERSED[d] for d in asked]
    assert [NAMES[REVERSED[i]] for i in range(4)] == ["left", "right", "down", "up"]
    assert read_directions(x.flip(2), opposite)[0] >= 0.95
    assert read_directions(x.flip(2), asked)[0] <= 0.05


def test_inside_starts_keep_the_blob_in_the_grid_and_free_ones_do_not_depend_on_direction():
    g = torch.Generator().manual_seed(2)
    x = clips([0] * 256, g, "inside")  # moving right
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    w = x[:, 0, 0] + 0.5
    first_x = (w * xx).sum((-1, -2)) / w.sum((-1, -2))
    assert first_x.max() < 10  # starts in the left part, so it ends inside
    free = clips([0] * 256, g, "free")[:, 0, 0] + 0.5
    assert ((free * xx).sum((-1, -2)) / free.sum((-1, -2))).max() > 10
    assert len(set(captions())) == 4
    with pytest.raises(ValueError, match="start must be"):
        clips([0], g, "outside")


def test_a_short_run_logs_one_row_per_evaluation():
    lines = []
    rows = run(layers=1, steps=2, every=1, contrast=1.0, bayes_clips=2, log=lines.append)
    assert [r["step"] for r in rows] == [1, 2] and len(lines) == 2
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0 for r in rows)
    assert all(r["gap_0.6"] != 0.0 and r["gap_0.9"] != 0.0 for r in rows)  # a random model's words move its output


def test_the_bayes_denoiser_is_a_floor_that_knows_the_caption_is_worth_something():
    x0, eps, losses = bayes_losses(sigmas=(0.3, 0.9), n=8)
    assert x0.shape == eps.shape == (8, 4, 9, 16, 16)
    (low_k, low_b), (high_k, high_b) = losses[0.3], losses[0.9]
    assert low_k < 0.005 and low_k <= low_b + 1e-6  # the clip is plain to see at low noise
    assert high_k < high_b  # at high noise the direction narrows the posterior
    assert high_k > low_k


def test_anchor_ramps_and_a_first_frame_run_reads_all_three_samplers():
    x = clips([0, 1], torch.Generator().manual_seed(3), anchor=True)
    assert torch.allclose(x[0, 1, 0, 0], torch.linspace(-0.5, 0.5, 16))  # x ramp along a row
    assert torch.allclose(x[0, 3, :, 0, 0], torch.linspace(-0.5, 0.5, 9))  # frame ramp
    lines = []
    rows = run(layers=1, steps=1, every=1, given_share=1.0, given_frame=4, bayes_clips=2, log=lines.append)
    assert len(rows) == 1 and "keyframe sampler" in lines[0]
    row = rows[0]
    assert 0.0 <= row["given_accuracy"] <= 1.0 and 0.0 <= row["keyframe_accuracy"] <= 1.0
    assert row["loss_0.9"] > row["bayes_0.9"] > 0  # an untrained model is far above the floor
