"""The Shapes world: scene specifications, their vocabularies and the procedural renderer.

A scene (`SceneSpec`) is one or two objects (`ObjectSpec`) on a plain background. Every object has a shape, a
colour, a direction of motion, a speed and a size, each drawn from a small closed vocabulary (module constants
below). Scenes round-trip through JSON with `to_dict` / `from_dict`.

Geometry. Let S = min(H, W) be the frame's short side, in pixels. Pixel (i, j) covers [j, j + 1) × [i, i + 1) and
its centre is (x, y) = (j + ½, i + ½); y points down. An object of size class z has a square bounding box of side
e = SIZES[z]·S. Its shape is inscribed in that box, axis-aligned, never rotated:
- circle: the disc of diameter e;             fill ratio (area / e²) π/4
- square: the box itself;                     fill ratio 1
- triangle: apex at the top-centre, base along the bottom edge; fill ratio ½, centroid e/6 below the box centre
- diamond: the box's edge midpoints joined;   fill ratio ½
Each shape has a signed distance function d (negative inside; exact for the straight edges, a bound near
corners) and is drawn with linear-ramp anti-aliasing: coverage = clip(½ − d, 0, 1), which integrates to the true
area. Frames are composited in object order: frame = frame·(1 − a) + colour·a.

Motion. An object's box centre moves at constant velocity: c(t) = c₀ + D·t with t = k / (T − 1) for frame
k = 0 … T − 1. D = SPEEDS[speed]·S·u where u is the unit vector of the direction (diagonals are (±1, ±1)/√2), so a
speed is the fraction of the short side travelled over the whole clip, whatever T is; "still" means D = 0. The
start c₀ is drawn uniformly, from `numpy.random.default_rng(seed)`, among positions that keep the whole box at
least one pixel inside the frame for every t. With two objects, up to 256 start pairs are drawn and the first
whose bounding boxes stay at least 2 px apart (along x or y) in every frame is used; if none does, the pair with
the largest worst-frame gap. So a clip is a pure function of (spec, num_frames, height, width, seed).

`random_scene` draws scenes from a fixed distribution (documented on the function); `mutate` changes a scene in
exactly one attribute its canonical caption states (used to measure the verifier's false-success rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DEFAULT_BACKGROUND",
    "DEFAULT_SIZE",
    "DEFAULT_SPEED",
    "DIRECTIONS",
    "MAX_OBJECTS",
    "MUTATIONS",
    "SHAPES",
    "SHAPE_CENTROID_OFFSET",
    "SHAPE_FILL",
    "SIZES",
    "SPEEDS",
    "ObjectSpec",
    "SceneSpec",
    "applicable_mutations",
    "mutate",
    "random_scene",
    "render",
    "shape_coverage",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
"""Shape names. All four are told apart by the verifier at 64×64 after blur (see `verifier.py`)."""

SHAPE_FILL: dict[str, float] = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}
"""Area of each shape divided by the area of its bounding box."""

SHAPE_CENTROID_OFFSET: dict[str, float] = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 6.0, "diamond": 0.0}
"""Vertical offset of each shape's centroid below its bounding-box centre, as a fraction of the box side."""

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.05, 0.05),
    "orange": (1.0, 0.6, 0.1),
    "yellow": (1.0, 1.0, 0.15),
    "green": (0.2, 0.95, 0.25),
    "cyan": (0.2, 0.95, 0.95),
    "blue": (0.05, 0.2, 0.95),
    "purple": (0.55, 0.05, 0.85),
    "white": (1.0, 1.0, 1.0),
}
"""Object colours (RGB in [0, 1]). The chromatic ones are saturated and spread in hue (0°, 33°, 60°, 124°, 180°,
230°, 278°); their luma (0.299 R + 0.587 G + 0.114 B) is ≥ 0.15 away from the grey background (0.45), so
shapes survive codecs that blur chroma. White is the one achromatic colour, never used on a white background."""

BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "grey": (0.45, 0.45, 0.45),
    "white": (1.0, 1.0, 1.0),
}
"""Plain, achromatic backgrounds: blending an object's edge into them keeps its hue (what the verifier reads)."""

DIRECTIONS: dict[str, tuple[float, float]] = {
    "still": (0.0, 0.0),
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "up-right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "down-left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "down-right": (math.sqrt(0.5), math.sqrt(0.5)),
}
"""Unit motion vectors in image coordinates (x right, y down)."""

SPEEDS: dict[str, float] = {"slow": 0.2, "normal": 0.35, "fast": 0.55}
"""Distance travelled over the whole clip, as a fraction of the frame's short side."""

SIZES: dict[str, float] = {"small": 0.18, "medium": 0.26, "large": 0.36}
"""Bounding-box side, as a fraction of the frame's short side."""

DEFAULT_SIZE = "medium"
DEFAULT_SPEED = "normal"
DEFAULT_BACKGROUND = "black"
MAX_OBJECTS = 2


def _check(value: str, vocabulary: Any, what: str) -> None:
    if value not in vocabulary:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(vocabulary)}")


@dataclass(frozen=True)
class ObjectSpec:
    """One object: what it looks like and how it moves.

    A still object has no speed: its `speed` must be the default ("normal"), so that every scene has exactly one
    canonical caption and `parse_caption(caption(spec)) == spec`.
    """

    shape: str
    """One of `SHAPES`."""
    colour: str
    """One of `COLOURS`."""
    direction: str
    """One of `DIRECTIONS` ("still" or one of eight compass directions, e.g. "up-left")."""
    speed: str = DEFAULT_SPEED
    """One of `SPEEDS`."""
    size: str = DEFAULT_SIZE
    """One of `SIZES`."""

    def __post_init__(self) -> None:
        _check(self.shape, SHAPES, "shape")
        _check(self.colour, COLOURS, "colour")
        _check(self.direction, DIRECTIONS, "direction")
        _check(self.speed, SPEEDS, "speed")
        _check(self.size, SIZES, "size")
        if self.direction == "still" and self.speed != DEFAULT_SPEED:
            raise ValueError(f"a still object has no speed: use speed={DEFAULT_SPEED!r}, not {self.speed!r}")

    def to_dict(self) -> dict[str, str]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "direction": self.direction,
            "speed": self.speed,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectSpec:
        unknown = set(data) - {"shape", "colour", "direction", "speed", "size"}
        if unknown:
            raise ValueError(f"unknown object key(s) {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class SceneSpec:
    """A scene: 1–`MAX_OBJECTS` objects of distinct colours on a plain background."""

    objects: list[ObjectSpec] = field(default_factory=list)
    """The objects, in drawing order (the last one is drawn on top)."""
    background: str = DEFAULT_BACKGROUND
    """One of `BACKGROUNDS`."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        _check(self.background, BACKGROUNDS, "background")
        colours = [o.colour for o in self.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(f"objects in a scene must have distinct colours, got {colours}")
        if self.background == "white" and "white" in colours:
            raise ValueError("a white object on a white background is invisible")

    def __hash__(self) -> int:
        return hash((tuple(self.objects), self.background))

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects], "background": self.background}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        unknown = set(data) - {"objects", "background"}
        if unknown:
            raise ValueError(f"unknown scene key(s) {sorted(unknown)}")
        objects = [ObjectSpec.from_dict(o) for o in data["objects"]]
        return cls(objects=objects, background=data.get("background", DEFAULT_BACKGROUND))


def random_scene(rng: np.random.Generator, *, num_objects: int | None = None) -> SceneSpec:
    """Draw a scene. Distribution: 1 object with probability 0.7, else 2 (unless `num_objects` is given);
    background black 0.5 / grey 0.25 / white 0.25; colours uniform without replacement (white excluded on a white
    background); shape and size uniform; direction uniform over the 9 (so "still" is 1/9); speed uniform over
    the 3 for a moving object."""
    if num_objects is None:
        num_objects = 1 if rng.random() < 0.7 else 2
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in 1..{MAX_OBJECTS}, got {num_objects}")
    background = str(rng.choice(list(BACKGROUNDS), p=[0.5, 0.25, 0.25]))
    palette = [c for c in COLOURS if not (background == "white" and c == "white")]
    colours = rng.choice(palette, size=num_objects, replace=False)
    objects = []
    for colour in colours:
        direction = str(rng.choice(list(DIRECTIONS)))
        speed = DEFAULT_SPEED if direction == "still" else str(rng.choice(list(SPEEDS)))
        objects.append(
            ObjectSpec(
                shape=str(rng.choice(SHAPES)),
                colour=str(colour),
                direction=direction,
                speed=speed,
                size=str(rng.choice(list(SIZES))),
            )
        )
    return SceneSpec(objects=objects, background=background)


def shape_coverage(shape: str, dx: np.ndarray, dy: np.ndarray, extent: float | np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of `shape` at pixel-centre offsets (dx, dy) from its bounding-box centre,
    for a box of side `extent` pixels (broadcast together)."""
    h = np.asarray(extent, dtype=np.float32) / 2
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        sdf = np.sqrt(dx * dx + dy * dy) - h
    elif shape == "square":
        sdf = np.maximum(ax, ay) - h
    elif shape == "diamond":
        sdf = (ax + ay - h) * np.float32(math.sqrt(0.5))
    elif shape == "triangle":
        sdf = np.maximum(dy - h, (2 * ax - dy - h) * np.float32(1 / math.sqrt(5)))
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    return np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)


def _start_range(extent: float, disp: float, length: int) -> tuple[float, float]:
    lo = 1.0 + extent / 2 - min(0.0, disp)
    hi = length - 1.0 - extent / 2 - max(0.0, disp)
    assert lo <= hi, (extent, disp, length)
    return lo, hi


def _trajectories(spec: SceneSpec, times: np.ndarray, height: int, width: int, seed: int) -> list[np.ndarray]:
    """Box-centre trajectories [T, 2] (x, y) in pixels, one per object."""
    s = min(height, width)
    rng = np.random.default_rng(seed)
    extents = [SIZES[o.size] * s for o in spec.objects]
    disps = [np.array(DIRECTIONS[o.direction]) * SPEEDS[o.speed] * s for o in spec.objects]

    def draw() -> list[np.ndarray]:
        tracks = []
        for e, d in zip(extents, disps):
            x0 = rng.uniform(*_start_range(e, d[0], width))
            y0 = rng.uniform(*_start_range(e, d[1], height))
            tracks.append(np.array([x0, y0])[None, :] + times[:, None] * d[None, :])
        return tracks

    if len(spec.objects) == 1:
        return draw()
    half = (extents[0] + extents[1]) / 2
    best, best_gap = None, -math.inf
    for _ in range(256):
        tracks = draw()
        gap = float(np.min(np.max(np.abs(tracks[0] - tracks[1]) - half, axis=1)))  # box gap, worst frame
        if gap >= 2.0:
            return tracks
        if gap > best_gap:
            best, best_gap = tracks, gap
    assert best is not None
    return best


def render(spec: SceneSpec, *, num_frames: int = 17, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """Render `spec` as float32 [3, T, H, W] in [0, 1]; a pure function of its arguments (see the module doc)."""
    if num_frames < 1 or height < 8 or width < 8:
        raise ValueError(f"need num_frames >= 1 and height, width >= 8; got {num_frames}, {height}, {width}")
    s = min(height, width)
    times = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    tracks = _trajectories(spec, times, height, width, seed)
    ys = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None]
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :]
    video = np.empty((3, num_frames, height, width), dtype=np.float32)
    video[:] = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)[:, None, None, None]
    for obj, track in zip(spec.objects, tracks):
        cx = track[:, 0].astype(np.float32)[:, None, None]
        cy = track[:, 1].astype(np.float32)[:, None, None]
        alpha = shape_coverage(obj.shape, xs - cx, ys - cy, SIZES[obj.size] * s)[None]
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)[:, None, None, None]
        video = video * (1 - alpha) + colour * alpha
    return np.clip(video, 0.0, 1.0).astype(np.float32)


MUTATIONS: tuple[str, ...] = (
    "colour",
    "shape",
    "size",
    "direction",
    "speed",
    "background",
    "add_object",
    "remove_object",
)
"""Kinds of single-attribute change `mutate` can make."""


def applicable_mutations(spec: SceneSpec) -> list[str]:
    """The mutation kinds that yield a different valid scene (e.g. "speed" needs a moving object)."""
    kinds = ["colour", "shape", "size", "direction", "background"]
    if any(o.direction != "still" for o in spec.objects):
        kinds.append("speed")
    if len(spec.objects) < MAX_OBJECTS:
        kinds.append("add_object")
    if len(spec.objects) > 1:
        kinds.append("remove_object")
    return kinds


def mutate(spec: SceneSpec, rng: np.random.Generator, kind: str | None = None) -> SceneSpec:
    """Return a valid scene that differs from `spec` in exactly one attribute of its canonical caption.

    `kind` is one of `MUTATIONS` (default: uniform over `applicable_mutations(spec)`); the object changed is
    chosen uniformly. "direction" may turn a moving object still (speed reset to the default) or set a still one
    moving (speed drawn uniformly); "add_object" appends a random object of a new colour.
    """
    kinds = applicable_mutations(spec)
    if kind is None:
        kind = str(rng.choice(kinds))
    if kind not in kinds:
        raise ValueError(f"mutation {kind!r} does not apply to this scene; applicable: {kinds}")
    objects = list(spec.objects)
    used = {o.colour for o in objects}
    if kind == "background":
        choices = [b for b in BACKGROUNDS if b != spec.background and not (b == "white" and "white" in used)]
        return SceneSpec(objects=objects, background=str(rng.choice(choices)))
    if kind == "add_object":
        while True:
            extra = random_scene(rng, num_objects=1).objects[0]
            if extra.colour not in used and not (spec.background == "white" and extra.colour == "white"):
                return SceneSpec(objects=[*objects, extra], background=spec.background)
    if kind == "remove_object":
        del objects[int(rng.integers(len(objects)))]
        return SceneSpec(objects=objects, background=spec.background)
    candidates = [i for i, o in enumerate(objects) if kind != "speed" or o.direction != "still"]
    i = int(rng.choice(candidates))
    o = objects[i]
    if kind == "colour":
        choices = [c for c in COLOURS if c not in used and not (spec.background == "white" and c == "white")]
        new = ObjectSpec(o.shape, str(rng.choice(choices)), o.direction, o.speed, o.size)
    elif kind == "shape":
        new = ObjectSpec(str(rng.choice([s for s in SHAPES if s != o.shape])), o.colour, o.direction, o.speed, o.size)
    elif kind == "size":
        new = ObjectSpec(o.shape, o.colour, o.direction, o.speed, str(rng.choice([z for z in SIZES if z != o.size])))
    elif kind == "speed":
        new = ObjectSpec(o.shape, o.colour, o.direction, str(rng.choice([v for v in SPEEDS if v != o.speed])), o.size)
    else:  # direction
        direction = str(rng.choice([d for d in DIRECTIONS if d != o.direction]))
        if direction == "still":
            speed = DEFAULT_SPEED
        elif o.direction == "still":
            speed = str(rng.choice(list(SPEEDS)))
        else:
            speed = o.speed
        new = ObjectSpec(o.shape, o.colour, direction, speed, o.size)
    objects[i] = new
    return SceneSpec(objects=objects, background=spec.background)
