"""The Shapes world: scene specs, the renderer's determinism and geometry, mutations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vidpost.shapes.captions import caption
from vidpost.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    MUTATIONS,
    SHAPE_FILL,
    SHAPES,
    SIZES,
    SPEEDS,
    ObjectSpec,
    SceneSpec,
    applicable_mutations,
    mutate,
    random_scene,
    render,
)


def _centroid(video: np.ndarray, background: str) -> np.ndarray:
    """Per-frame centroid (x, y) of everything that differs from the background, [T, 2]."""
    bg = np.asarray(BACKGROUNDS[background], dtype=np.float32)[:, None, None, None]
    weight = np.abs(video - bg).sum(0)
    t, h, w = weight.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    total = weight.sum((1, 2))
    return np.stack([(weight * xs).sum((1, 2)) / total, (weight * ys).sum((1, 2)) / total], 1)


def test_vocabularies():
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert len(COLOURS) >= 6 and len(BACKGROUNDS) >= 2
    assert set(DIRECTIONS) == {
        "still",
        "left",
        "right",
        "up",
        "down",
        "up-left",
        "up-right",
        "down-left",
        "down-right",
    }
    for vector in DIRECTIONS.values():
        assert math.hypot(*vector) in (0.0, pytest.approx(1.0))
    assert SPEEDS["slow"] < SPEEDS["normal"] < SPEEDS["fast"]
    assert SIZES["small"] < SIZES["medium"] < SIZES["large"]
    # the largest object moving fastest still fits in the frame
    assert max(SIZES.values()) + max(SPEEDS.values()) < 1.0


def test_render_shape_dtype_range_and_determinism():
    spec = SceneSpec([ObjectSpec("triangle", "red", "right"), ObjectSpec("circle", "blue", "up", "fast", "large")])
    a = render(spec, seed=3)
    assert a.shape == (3, 17, 64, 64) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, render(spec, seed=3))
    assert not np.array_equal(a, render(spec, seed=4))
    b = render(spec, num_frames=9, height=32, width=48, seed=3)
    assert b.shape == (3, 9, 32, 48)


def test_render_object_area_and_colour():
    for shape in SHAPES:
        for size in SIZES:
            spec = SceneSpec([ObjectSpec(shape, "white", "still", size=size)])
            video = render(spec, num_frames=2)
            area = float(video[0, 0].sum())  # white on black: channel value = coverage
            expected = SHAPE_FILL[shape] * (SIZES[size] * 64) ** 2
            assert area == pytest.approx(expected, rel=0.02), (shape, size)
    red = render(SceneSpec([ObjectSpec("square", "red", "still", size="large")], "grey"), num_frames=1)
    pixels = red[:, 0].reshape(3, -1).T
    is_red = np.all(np.abs(pixels - np.asarray(COLOURS["red"])) < 1e-6, axis=1)
    is_grey = np.all(np.abs(pixels - np.asarray(BACKGROUNDS["grey"])) < 1e-6, axis=1)
    assert is_red.sum() >= (0.36 * 64 - 2) ** 2  # the square's interior is exactly the palette colour
    assert is_red.sum() + is_grey.sum() > 0.95 * len(pixels)  # everything else is background or an edge


@pytest.mark.parametrize("direction", [d for d in DIRECTIONS if d != "still"])
def test_centroid_moves_in_the_named_direction(direction):
    for seed in range(3):
        spec = SceneSpec([ObjectSpec("circle", "green", direction, "normal", "small")])
        track = _centroid(render(spec, seed=seed), "black")
        disp = (track[-1] - track[0]) / 64
        assert np.linalg.norm(disp) == pytest.approx(SPEEDS["normal"], rel=0.02)
        unit = np.asarray(DIRECTIONS[direction])
        assert float(disp @ unit) / np.linalg.norm(disp) > 0.999
        steps = np.diff(track, axis=0)
        assert np.abs(steps - steps.mean(0)).max() < 0.05  # constant velocity (px per frame)


def test_still_object_does_not_move():
    track = _centroid(render(SceneSpec([ObjectSpec("square", "cyan", "still")]), seed=1), "black")
    assert np.abs(track - track[0]).max() < 1e-3


def test_whole_motion_stays_in_frame():
    rng = np.random.default_rng(0)
    for seed in range(60):
        spec = random_scene(rng)
        video = render(spec, seed=seed)
        bg = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)[:, None, None]
        for edge in (video[:, :, 0, :], video[:, :, -1, :], video[:, :, :, 0], video[:, :, :, -1]):
            np.testing.assert_allclose(edge, np.broadcast_to(bg, edge.shape), atol=1e-6)


def test_json_round_trip_and_validation():
    rng = np.random.default_rng(1)
    for _ in range(200):
        spec = random_scene(rng)
        assert SceneSpec.from_dict(spec.to_dict()) == spec
        assert len({o.colour for o in spec.objects}) == len(spec.objects)
        assert not (spec.background == "white" and any(o.colour == "white" for o in spec.objects))
    with pytest.raises(ValueError, match="colour 'pink'"):
        ObjectSpec("circle", "pink", "up")
    with pytest.raises(ValueError, match="still object has no speed"):
        ObjectSpec("circle", "red", "still", speed="fast")
    with pytest.raises(ValueError, match="distinct colours"):
        SceneSpec([ObjectSpec("circle", "red", "up"), ObjectSpec("square", "red", "down")])
    with pytest.raises(ValueError, match="invisible"):
        SceneSpec([ObjectSpec("circle", "white", "up")], "white")
    with pytest.raises(ValueError, match="1 to 2 objects"):
        SceneSpec([])
    with pytest.raises(ValueError, match="unknown object key"):
        SceneSpec.from_dict({"objects": [{"shape": "circle", "colour": "red", "direction": "up", "hue": 3}]})


def test_random_scene_distribution():
    rng = np.random.default_rng(2)
    specs = [random_scene(rng) for _ in range(2000)]
    two = np.mean([len(s.objects) == 2 for s in specs])
    assert 0.25 < two < 0.35
    objects = [o for s in specs for o in s.objects]
    for vocab, attr in ((SHAPES, "shape"), (DIRECTIONS, "direction"), (SIZES, "size")):
        assert {getattr(o, attr) for o in objects} == set(vocab)


def test_mutate_changes_exactly_one_stated_attribute():
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(400):
        spec = random_scene(rng)
        kind = str(rng.choice(applicable_mutations(spec)))
        other = mutate(spec, rng, kind)
        seen.add(kind)
        assert caption(other) != caption(spec)
        if kind == "background":
            assert other.objects == spec.objects and other.background != spec.background
        elif kind in ("add_object", "remove_object"):
            assert abs(len(other.objects) - len(spec.objects)) == 1
        else:
            changed = [(a, b) for a, b in zip(spec.objects, other.objects) if a != b]
            assert len(changed) == 1 and other.background == spec.background
            a, b = changed[0]
            differing = {
                f for f in ("shape", "colour", "direction", "speed", "size") if getattr(a, f) != getattr(b, f)
            }
            assert kind in differing and differing <= {kind, "speed"}  # direction to/from still resets speed
    assert seen == set(MUTATIONS)
    still = SceneSpec([ObjectSpec("circle", "red", "still")])
    with pytest.raises(ValueError, match="does not apply"):
        mutate(still, rng, "speed")
