"""The reward contract, the weight-free rewards (temporal, motion, verifier, threshold), the weighted combination
and the reward server's parity with in-process scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidpost.rewards.base import (
    RewardOutput,
    RewardPathError,
    WeightedReward,
    build_reward,
    build_rewards,
    require_files,
    select_frames,
)
from vidpost.rewards.motion import Motion, TemporalConsistency, lucas_kanade
from vidpost.shapes.captions import parse_caption
from vidpost.shapes.world import render

CAPTIONS = [
    "a large red circle moves quickly to the right on a black background",
    "a large red circle stays still on a black background",
    "a large red circle moves slowly to the right on a black background",
]


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    return torch.from_numpy(np.stack([render(parse_caption(c), num_frames=17, seed=3) for c in CAPTIONS]))


def test_select_frames_is_even_and_inclusive():
    v = torch.arange(17.0).view(1, 1, 17, 1, 1).expand(1, 3, 17, 2, 2)
    picked = select_frames(v, 5)[0, :, 0, 0, 0]
    assert picked.tolist() == [0, 4, 8, 12, 16]
    assert select_frames(v, None).shape[1] == 17
    assert select_frames(v, 1)[0, :, 0, 0, 0].tolist() == [8]


def test_contract_rejects_bad_input(clips):
    reward = TemporalConsistency()
    with pytest.raises(ValueError, match="prompts"):
        reward(clips, CAPTIONS[:2])
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        reward(clips[:, :, 0], CAPTIONS)
    with pytest.raises(ValueError, match="float"):
        reward((clips * 255).to(torch.uint8), CAPTIONS)


def test_lucas_kanade_recovers_a_known_shift():
    torch.manual_seed(0)
    pool = torch.nn.functional.avg_pool2d
    base = pool(pool(torch.rand(1, 1, 90, 90), 5, stride=1), 5, stride=1)  # a smooth texture
    a, b = base[..., 2:66, 2:66], base[..., 2:66, 3:67]  # b is a shifted one pixel left: flow u = −1
    flow = lucas_kanade(a, b)[..., 8:-8, 8:-8]
    assert flow[:, 0].mean().item() == pytest.approx(-1.0, abs=0.1)
    assert flow[:, 1].abs().mean().item() < 0.1


def test_motion_orders_speeds_and_flags_still_clips(clips):
    out = Motion()(clips, CAPTIONS)
    fast, still, slow = out.score.tolist()
    assert fast > slow > still
    assert still == pytest.approx(0.0, abs=1e-4)
    assert out.components["dynamic"].tolist() == [1.0, 0.0, 1.0]
    assert out.components["frame_diff"][1] == 0


def test_temporal_consistency(clips):
    out = TemporalConsistency()(clips, CAPTIONS)
    fast, still, slow = out.score.tolist()
    assert still == pytest.approx(1.0, abs=1e-5)
    assert still > slow > fast
    flicker = clips.clone()
    flicker[:, :, 1::2] = 1 - flicker[:, :, 1::2]
    assert (TemporalConsistency()(flicker, CAPTIONS).score < out.score).all()
    prev_only = TemporalConsistency(first_weight=0.0)(clips, CAPTIONS)
    torch.testing.assert_close(prev_only.score, out.components["frame_to_prev"])
    assert prev_only.score[0] > out.score[0]  # the moving clip no longer pays for leaving its first position
    with pytest.raises(ValueError, match="first_weight"):
        TemporalConsistency(first_weight=1.5)


def test_verifier_reward_graded_binary_and_unparsed(clips):
    graded = build_reward("verifier")(clips, CAPTIONS)
    assert graded.score.tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)
    wrong = ["a large blue square moves quickly to the left on a white background"] * 3
    bad = build_reward("verifier_binary")(clips, wrong)
    assert bad.score.tolist() == [0.0, 0.0, 0.0]
    assert (build_reward("verifier")(clips, wrong).score < 0.8).all()
    odd = build_reward("verifier")(clips, ["not a shapes caption at all"] * 3)
    assert odd.components["unparsed"].tolist() == [1.0, 1.0, 1.0] and odd.score.sum() == 0


def test_verifier_attribute_subset(clips):
    wrong = ["a large red square moves quickly to the right on a black background"] * 3  # only the shape is wrong
    full = build_reward("verifier")(clips, wrong)
    shape_only = build_reward("verifier", attributes=["shape"])(clips, wrong)
    others = build_reward("verifier", attributes=["colour", "size", "background"])(clips, wrong)
    torch.testing.assert_close(shape_only.score, full.components["shape"])
    assert (shape_only.score < 0.5).all() and (others.score > 0.99).all()
    with pytest.raises(ValueError, match="unknown attributes"):
        build_reward("verifier", attributes=["colour", "hue"])
    # binary over a subset: correct when every listed attribute is, whatever the others
    assert (
        build_reward("verifier_binary", attributes=["colour", "size", "background"])(clips, wrong).score.tolist()
        == [1.0] * 3
    )
    binary_shape = build_reward("verifier_binary", attributes=["colour", "shape"])(clips, wrong)
    assert binary_shape.score.tolist() == [0.0] * 3
    assert binary_shape.components["success"].tolist() == [0.0] * 3


def test_threshold_wrapper(clips):
    out = build_reward("threshold", reward="motion", threshold=1.0)(clips, CAPTIONS)
    raw = Motion()(clips, CAPTIONS).score
    assert torch.equal(out.components["raw"], raw)
    assert out.score.tolist() == (raw >= 1.0).float().tolist()


def test_weighted_combination(clips):
    combo = build_rewards({"temporal": 1.0, "motion": {"weight": 0.5, "size": 32}, "tc2": {"type": "temporal"}})
    assert isinstance(combo, WeightedReward) and combo.names == ["temporal", "motion", "tc2"]
    out = combo(clips, CAPTIONS)
    t = TemporalConsistency()(clips, CAPTIONS).score
    m = Motion(size=32)(clips, CAPTIONS)
    torch.testing.assert_close(out.score, t + 0.5 * m.score + t)
    torch.testing.assert_close(out.components["motion/frame_diff"], m.components["frame_diff"])
    assert set(out.components) >= {"temporal", "motion", "tc2", "temporal/frame_to_first"}
    with pytest.raises(KeyError, match="unknown reward 'nope'.*known:"):
        build_rewards({"nope": 1.0})


def test_require_files_names_what_is_missing(tmp_path):
    with pytest.raises(RewardPathError, match="does not exist.*HPS_v2.1_compressed.pt"):
        require_files(tmp_path / "missing", ["HPS_v2.1_compressed.pt"], "hps")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RewardPathError, match="lacks model.safetensors"):
        require_files(tmp_path, ["config.json", "model.safetensors"], "pickscore")
    with pytest.raises(RewardPathError, match="no weights path"):
        require_files(None, ["x"], "clip")
    assert require_files(tmp_path, ["config.json"], "x") == tmp_path


def test_reward_server_matches_in_process(clips):
    from vidpost.rewards.server import RewardServer

    spec = {"temporal": 1.0, "motion": {"weight": 0.5, "size": 32}, "verifier": 0.25}
    ref = build_rewards(spec)(clips, CAPTIONS)
    with RewardServer(spec, workers=2) as server:
        pending = [server.submit(clips, CAPTIONS), server.submit(clips[:1], CAPTIONS[:1])]
        first, second = (p.result(timeout=120) for p in pending)
    assert isinstance(first, RewardOutput)
    assert torch.equal(first.score, ref.score)
    assert first.components.keys() == ref.components.keys()
    for key in ref.components:
        assert torch.equal(first.components[key], ref.components[key])
    assert torch.equal(second.score, ref.score[:1])


def test_reward_server_reports_worker_errors():
    from vidpost.rewards.server import RewardServer

    with pytest.raises(RuntimeError, match="failed to build"):
        RewardServer({"hps": {"weight": 1.0, "path": "/nonexistent/hps"}}, start_timeout=120)


def test_brightness_is_the_mean_pixel_value_with_a_gradient_and_a_sign():
    from vidpost.rewards.base import build_reward, build_rewards

    videos = torch.zeros(2, 3, 2, 4, 4)
    videos[0] = 0.25
    videos[1, 1] = 0.9  # green only: mean 0.3, luma 0.587·0.9
    out = build_reward("brightness")(videos, ["", ""])
    assert out.score.tolist() == pytest.approx([0.25, 0.3])
    assert out.components["luma"].tolist() == pytest.approx([0.25, 0.587 * 0.9])
    assert build_reward("brightness", sign=-1)(videos, ["", ""]).score.tolist() == pytest.approx([-0.25, -0.3])
    mixed = build_rewards({"brightness": 1.0})(videos, ["", ""])
    assert mixed.score.tolist() == pytest.approx([0.25, 0.3])
    x = videos.clone().requires_grad_(True)
    reward = build_reward("brightness")
    assert reward.differentiable
    reward._score(x, ["", ""]).score.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 1 / (3 * 2 * 4 * 4)))
    with pytest.raises(ValueError, match="sign must be 1 or -1"):
        build_reward("brightness", sign=2)
