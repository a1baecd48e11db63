"""`verifier_soft`: the differentiable reading of the Shapes verifier agrees with the verifier and has a useful
gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidpost.rewards.base import build_reward
from vidpost.rewards.verifier_soft import ATTRIBUTES_SOFT
from vidpost.shapes.captions import caption, parse_caption
from vidpost.shapes.degrade import degrade
from vidpost.shapes.verifier import verify
from vidpost.shapes.world import applicable_mutations, mutate, random_scene, render


def _clip(spec, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.asarray(render(spec, seed=seed))).float()


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(float)


def test_ground_truth_scores_near_one_and_the_ranking_follows_the_verifier():
    """Ground truth, one-attribute mutations and degraded clips of 30 scenes: the soft score's rank correlation with
    the verifier's graded score is ≥ 0.8 (0.91 measured on 60 scenes)."""
    reward = build_reward("verifier_soft")
    rng = np.random.default_rng(3)
    hard, soft, truth = [], [], []
    for i in range(30):
        spec = random_scene(rng)
        other = mutate(spec, rng, str(rng.choice(applicable_mutations(spec))))
        for video in (render(spec, seed=i), render(other, seed=i), degrade(render(spec, seed=i), rng)):
            hard.append(verify(video, spec)["score"])
            soft.append(float(reward(torch.from_numpy(np.asarray(video))[None].float(), [caption(spec)]).score[0]))
        truth.append(soft[-3])
    assert np.mean(truth) > 0.97
    rho = np.corrcoef(_ranks(np.array(hard)), _ranks(np.array(soft)))[0, 1]
    assert rho >= 0.8, rho


def test_each_attribute_reads_the_caption():
    spec = parse_caption("a large red square moves quickly to the right on a grey background")
    video = _clip(spec)[None]
    reward = build_reward("verifier_soft")
    right = reward(video, [caption(spec)]).components
    assert all(right[a].item() > 0.95 for a in ATTRIBUTES_SOFT)
    for changed, attr in [
        ("a large red square moves quickly to the left on a grey background", "direction"),
        ("a large red square moves slowly to the right on a grey background", "speed"),
        ("a small red square moves quickly to the right on a grey background", "size"),
        ("a large blue square moves quickly to the right on a grey background", "colour"),
        ("a large red square moves quickly to the right on a white background", "background"),
    ]:
        assert reward(video, [changed]).components[attr].item() < 0.5, (changed, attr)


def _drift(video: torch.Tensor, px: int) -> torch.Tensor:
    """The clip with frame t shifted horizontally by round(t·px / (T − 1)) pixels (a sideways drift)."""
    t = video.shape[2]
    return torch.stack([video[:, :, i].roll(round(i * px / (t - 1)), dims=-1) for i in range(t)], dim=2)


def test_the_gradient_points_towards_the_caption_and_unparsed_prompts_score_zero():
    """A clip of an object moving up, scored against "moves to the right": the score's gradient has a positive
    inner product with a rightward drift of the clip and a negative one with a leftward drift, and the drifted
    clips score accordingly. (Inside an object and on the background the soft masks are saturated: the gradient
    lives on the edges, which is where a shift changes pixels.)"""
    spec = parse_caption("a green circle moves up")
    video = _clip(spec)[None].requires_grad_(True)
    reward = build_reward("verifier_soft")
    assert reward.differentiable
    wrong = "a green circle moves to the right"
    before = reward._score(video, [wrong]).score
    before.sum().backward()
    grad, clip = video.grad, video.detach()
    assert torch.isfinite(grad).all()
    right, left = _drift(clip, 6), _drift(clip, -6)
    assert (grad * (right - clip)).sum() > 0 > (grad * (left - clip)).sum()
    assert reward(right, [wrong]).score.item() > before.item() + 0.005 > reward(left, [wrong]).score.item() + 0.01
    out = reward(clip, ["not a shapes caption"])
    assert out.score.item() == 0.0 and out.components["unparsed"].item() == 1.0
    with pytest.raises(ValueError, match="kappa must be positive"):
        build_reward("verifier_soft", kappa=0)


@pytest.mark.parametrize("fill", [0.0, 0.5, 1.0])
def test_the_gradient_is_finite_on_a_clip_with_no_object(fill: float):
    """A uniform clip (no pixel of any colour: every soft mask is exactly 0) scores finitely and its gradient is finite
    (a square root of a zero mass once turned the whole batch's gradient into NaN)."""
    video = torch.full((1, 3, 9, 32, 32), fill, requires_grad=True)
    reward = build_reward("verifier_soft")
    out = reward._score(video, ["a large red square moves quickly to the right on a grey background"]).score
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(video.grad).all()
