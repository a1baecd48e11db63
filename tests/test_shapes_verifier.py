"""The Shapes-world verifier: accuracy on ground-truth and mutated clips, clean, degraded and at 32×32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidpost.shapes.captions import caption
from vidpost.shapes.degrade import degrade, gaussian_blur, jpeg
from vidpost.shapes.verifier import ATTRIBUTES, verifier_accuracy, verify, verify_batch
from vidpost.shapes.world import ObjectSpec, SceneSpec, applicable_mutations, mutate, random_scene, render


def _report(result: dict) -> str:
    return f"{result['success_rate']=}, {result['false_success_rate']=}, {result['attribute_accuracy']=}"


@pytest.mark.parametrize(("degraded", "n"), [(False, 250), (True, 200)])
def test_verifier_accuracy(degraded, n):
    result = verifier_accuracy(n, degrade=degraded, seed=11)
    assert result["success_rate"] >= 0.99, _report(result)
    assert result["false_success_rate"] <= 0.05, _report(result)
    assert result["ms_per_clip"] < 50.0
    # every kind of mutation was tried and caught
    assert len(result["false_success_by_mutation"]) == 8
    for kind, (rate, count) in result["false_success_by_mutation"].items():
        assert count > 0 and rate <= 0.1, kind


def test_verifier_on_blurry_32x32_clips():
    rng = np.random.default_rng(5)
    n, successes, false_successes = 120, 0, 0
    for _ in range(n):
        spec = random_scene(rng)
        other = mutate(spec, rng, str(rng.choice(applicable_mutations(spec))))
        seed = int(rng.integers(2**30))
        for target, counter in ((spec, "truth"), (other, "fake")):
            video = gaussian_blur(render(target, height=32, width=32, seed=seed), 0.7)
            video = np.clip(video + rng.normal(0.0, 0.02, video.shape), 0, 1)
            ok = verify(video, spec)["success"]
            if counter == "truth":
                successes += ok
            else:
                false_successes += ok
    assert successes / n >= 0.95
    assert false_successes / n <= 0.05


def test_verifier_survives_h264_like_chroma_loss_and_washed_colours():
    rng = np.random.default_rng(6)
    for _ in range(30):
        spec = random_scene(rng)
        video = render(spec, seed=int(rng.integers(1000)))
        washed = video * 0.7 + 0.15  # contrast down by 30 %
        assert verify(jpeg(washed, 60), spec)["success"], caption(spec)


def test_scores_are_graded_and_mutations_lower_them():
    rng = np.random.default_rng(7)
    for _ in range(20):
        spec = random_scene(rng)
        truth = verify(render(spec, seed=1), spec)
        assert truth["success"] and truth["score"] > 0.95
        for kind in applicable_mutations(spec):
            fake = verify(render(mutate(spec, rng, kind), seed=1), spec)
            assert not fake["success"], kind
            assert fake["score"] < truth["score"], kind
            for attr in ATTRIBUTES:
                assert 0.0 <= fake[attr] <= 1.0


def test_specific_failures_are_attributed():
    spec = SceneSpec([ObjectSpec("circle", "red", "right", "fast")])
    # static video for a moving prompt: direction fails, colour and shape still pass
    static = render(SceneSpec([ObjectSpec("circle", "red", "still")]), seed=2)
    result = verify(static, spec)
    assert not result["direction_ok"] and result["colour_ok"] and result["shape_ok"]
    assert result["objects"][0]["measured"]["direction"] == "still"
    # frames shuffled in time: the object jumps around, smoothness fails
    moving = render(spec, seed=2)
    shuffled = moving[:, np.random.default_rng(0).permutation(moving.shape[1])]
    assert not verify(shuffled, spec)["smoothness_ok"]
    # an extra, unmentioned object: count fails
    extra = SceneSpec([*spec.objects, ObjectSpec("square", "blue", "down")])
    assert not verify(render(extra, seed=2), spec)["count_ok"]
    # nothing at all
    empty = verify(np.zeros((3, 17, 64, 64), dtype=np.float32), spec)
    assert not empty["success"] and empty["colour"] == 0.0


def test_inputs_torch_batch_and_captions():
    rng = np.random.default_rng(8)
    specs = [random_scene(rng) for _ in range(4)]
    videos = np.stack([render(s, seed=i) for i, s in enumerate(specs)])
    single = [verify(v, s) for v, s in zip(videos, specs)]
    batch = verify_batch(torch.from_numpy(videos), [caption(s) for s in specs])
    assert batch["score"].shape == (4,) and batch["success"].dtype == bool
    np.testing.assert_allclose(batch["score"], [r["score"] for r in single])
    assert verify(torch.from_numpy(videos[0]).double(), specs[0])["score"] == pytest.approx(single[0]["score"])
    with pytest.raises(ValueError, match=r"\[3, T, H, W\]"):
        verify(videos[0, 0], specs[0])
    with pytest.raises(ValueError, match="4 videos and 3 specs"):
        verify_batch(videos, specs[:3])


def test_degrade_is_deterministic_and_in_range():
    video = render(SceneSpec([ObjectSpec("triangle", "yellow", "down")], "grey"), seed=0)
    a = degrade(video, np.random.default_rng(0))
    b = degrade(video, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert a.shape == video.shape and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    assert np.abs(a - video).mean() > 0.01  # it does degrade


@pytest.mark.parametrize("kind", ["noise", "constant", "nan", "blobs"])
def test_verifier_never_crashes_on_garbage_videos(kind):
    """A reward sees whatever a model generates: noise, flat frames, NaNs, random blobs."""
    rng = np.random.default_rng(3)
    specs = [random_scene(rng) for _ in range(12)]
    if kind == "noise":
        video = rng.random((3, 17, 64, 64), dtype=np.float32)
    elif kind == "constant":
        video = np.full((3, 17, 64, 64), 0.5, dtype=np.float32)
    elif kind == "nan":
        video = np.full((3, 17, 64, 64), np.nan, dtype=np.float32)
    else:
        video = (rng.random((3, 17, 8, 8)) > 0.7).repeat(8, 2).repeat(8, 3).astype(np.float32)
    for spec in specs:
        r = verify(video, spec)
        assert not r["success"] and 0.0 <= r["score"] <= 1.0
