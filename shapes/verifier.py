"""The Shapes-world verifier: reads a video back and checks it against a scene spec (a GenEval-like reward).

Input: a video float [3, T, H, W] in [0, 1] (numpy or torch) and a `SceneSpec` (or its canonical caption). Let
S = min(H, W) and t = 0 … T − 1 the frame index. Thresholds are module constants, in units of S, of H·W or of
RGB distance, so the same verifier runs at 64×64 and at 32×32. Everything is vectorised numpy (≈ 10–15 ms for a
17×64×64 clip on one CPU core).

1. Background. b = per-channel median of the border pixels (a frame edge ⌈S/32⌉ wide, all frames); its class is
   the `BACKGROUNDS` entry nearest in mean intensity (they are all achromatic).
2. Pixel labels, on the video smoothed by a 3×3 box filter (against noise). d = p − b, dist = ‖d‖₂;
   foreground = dist > `FG_THRESHOLD`. A foreground pixel is chromatic when the chroma of d, max(d) − min(d),
   exceeds `CHROMA_RATIO`·dist, and then takes the chromatic palette colour nearest in HSV hue of d (none if
   farther than `HUE_TOLERANCE`); otherwise it is "white" when brighter than b by `WHITE_MIN_GAIN`. Hue of the
   deviation from the background is the robust space: on an achromatic background it equals the object's hue
   whatever its coverage, and washing out, dimming or desaturating the video leave it unchanged.
3. Each prompt object is found through its colour (colours in a scene are distinct). Its colour direction u is
   the dist-weighted mean of d over its labelled pixels in YCbCr with chroma weighted by `CHROMA_WEIGHT` (codecs
   and decoders keep luma sharper than chroma); level = u·d, and r = the 98th percentile of level over the
   labelled pixels (the object's apparent contrast). Body = foreground pixels within 2 px of a labelled pixel
   and not labelled with another prompt object's colour; soft mask a = clip(level / r, 0, 1) on the body, so Σa
   is the object's area in pixels. Per frame: centre = weighted median of a, then twice the weighted mean inside
   a square window of half-side `WINDOW`·S; the object is found in a frame when that window holds at least
   `MIN_AREA`·H·W labelled pixels. colour score = found fraction × mean purity (the share of the colour's pixels
   inside the window); correct when found in ≥ `MIN_FOUND` of the frames.
4. Track: least-squares constant-velocity fit c(t) = c₀ + v·t of the centres over the found frames. Net
   displacement D = v·(T − 1) / S. |D| < `STILL_MAX` reads as "still", otherwise as the nearest of the 8 compass
   directions (45° sectors), and speed as the `SPEEDS` class nearest in log |D|. smoothness = found fraction ×
   exp(−(rms / `SMOOTH_RMS`)²) with rms the fit residual / S; correct when rms < `SMOOTH_RMS` and found.
5. Shape and size, by template matching robust to blur. Observation: on up to 8 found frames whose mass Σa is
   within 30 % of the median (no occlusion), the unsmoothed level / r (clipped to [−½, 1], zero on other prompt
   colours) in a square patch of half-side ⌈1.25·√(median Σa)⌉ + 3 around the centre, minus the mean of the
   patch's 2-px outer ring (values capped at 0.3; the local zero point, e.g. of noise clipped at 0). For each
   shape and each blur σ ∈ `TEMPLATE_SIGMAS` px: the ideal mask (`shape_coverage`) with its centroid on the
   measured centre, Gaussian-blurred, scaled to peak 1 like the observation, its box side e refitted
   `FIT_STEPS` times (e ← e·√(observed mass / template mass), starting from √(median Σa / fill ratio)). A shape's
   error is its best σ's sum of squared differences over the patches divided by the observation's Σ(obs²). The
   shape read is the one of least error; score = 1 / (1 + (own error / best other error)³) (½ at a tie).
   Size: extent = e of the shape read and its best σ, / S; class = the `SIZES` entry nearest in log;
   score = exp(−log(extent / expected)² / (2·0.15²)). The speed score is the same in log |D| (1 for "still").
6. Count: strong foreground (dist > max(`FG_THRESHOLD`, 0.3·99th percentile of dist)) outside every found
   object's disc (radius 0.75·extent + 0.05·S around its centre) is unexplained; its per-frame median must stay
   below `MIN_AREA`·H·W (an extra, unmentioned object fails); score = exp(−median / (`MIN_AREA`·H·W)).
7. Direction score: for an expected motion, ½(1 + cos Δθ)·min(1, |D| / `STILL_MAX`); for "still",
   exp(−(|D| / `STILL_MAX`)²). Background score: 1 − |mean(b) − mean(expected)| / 0.45, floored at 0.

Each attribute's score is the mean over objects and it is correct when correct for every object. `score` is the
mean of the eight attribute scores (`ATTRIBUTES`: colour, shape, size, direction, speed, background, count,
smoothness) and `success` is True when all eight are correct. `verifier_accuracy` measures the verifier itself:
success on ground-truth clips, and false success on clips rendered (same seed) from `mutate(spec)` — a scene that
differs in exactly one attribute the caption states — checked against the original spec, optionally degraded
with `degrade.degrade`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPE_CENTROID_OFFSET,
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
    shape_coverage,
)

__all__ = [
    "ATTRIBUTES",
    "verifier_accuracy",
    "verify",
    "verify_batch",
]

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "direction", "speed", "background", "count", "smoothness")
"""What the verifier checks; each gets a graded score and a boolean `<name>_ok`."""
_OBJECT_ATTRIBUTES = ("colour", "shape", "size", "direction", "speed", "smoothness")

FG_THRESHOLD = 0.15
CHROMA_RATIO = 0.3
HUE_TOLERANCE = 40.0
WHITE_MIN_GAIN = 0.1
WINDOW = 0.3
MIN_AREA = 0.004
MIN_FOUND = 0.75
STILL_MAX = 0.08
SMOOTH_RMS = 0.03
TEMPLATE_SIGMAS = (0.0, 0.6, 1.0, 1.5, 2.2)
FIT_STEPS = 2
CHROMA_WEIGHT = 0.5
_LOG_SIGMA = 0.15
_YCC = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.169 * CHROMA_WEIGHT, -0.331 * CHROMA_WEIGHT, 0.5 * CHROMA_WEIGHT],
        [0.5 * CHROMA_WEIGHT, -0.419 * CHROMA_WEIGHT, -0.081 * CHROMA_WEIGHT],
    ]
)

_COLOUR_NAMES = list(COLOURS)
_WHITE = _COLOUR_NAMES.index("white")
_CHROMATIC = [i for i, c in enumerate(_COLOUR_NAMES) if c != "white"]
_DIRECTION_ANGLES = {d: math.degrees(math.atan2(-v[1], v[0])) for d, v in DIRECTIONS.items() if d != "still"}


def _hue(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) of rgb [3, ...]."""
    r, g, b = rgb[0], rgb[1], rgb[2]
    mx, mn = rgb.max(0), rgb.min(0)
    c = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, ((g - b) / c) % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
    return (h * 60.0) % 360.0


_PALETTE_HUES = _hue(np.array([COLOURS[_COLOUR_NAMES[i]] for i in _CHROMATIC], dtype=np.float32).T)


def _box3(x: np.ndarray) -> np.ndarray:
    """3×3 box filter over the last two axes, edges replicated."""
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    rows = p[..., :-2, :] + p[..., 1:-1, :] + p[..., 2:, :]
    return (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]) / 9.0


def _project(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Σ_c weights[c]·x[c] over the channel axis of x [3, ...], in float32."""
    w = weights.astype(np.float32)
    return w[0] * x[0] + w[1] * x[1] + w[2] * x[2]


def _dilate2(mask: np.ndarray) -> np.ndarray:
    """Binary dilation of [T, H, W] by a 5×5 square."""
    out = mask.copy()
    for shift in (1, 2):
        out[:, shift:, :] |= mask[:, :-shift, :]
        out[:, :-shift, :] |= mask[:, shift:, :]
    rows = out.copy()
    for shift in (1, 2):
        out[:, :, shift:] |= rows[:, :, :-shift]
        out[:, :, :-shift] |= rows[:, :, shift:]
    return out


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """[n, n] matrix applying a 1-D Gaussian (zero padding), composed with the 3-tap box of `_box3`."""
    i = np.arange(n)
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    return (g / g.sum(1, keepdims=True)).astype(np.float32)


def _to_numpy(video: Any) -> np.ndarray:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(video, torch.Tensor):
        video = video.detach().float().cpu().numpy()
    video = np.asarray(video, dtype=np.float32)
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video [3, T, H, W], got shape {tuple(video.shape)}")
    return np.clip(np.nan_to_num(video, nan=0.0), 0.0, 1.0)


def _as_spec(spec: SceneSpec | str) -> SceneSpec:
    if isinstance(spec, str):
        from .captions import parse_caption

        return parse_caption(spec)
    return spec


def _nearest_log(value: float, classes: dict[str, float]) -> str:
    return min(classes, key=lambda k: abs(math.log(max(value, 1e-6) / classes[k])))


def _log_score(value: float, target: float) -> float:
    return math.exp(-(math.log(max(value, 1e-6) / target) ** 2) / (2 * _LOG_SIGMA**2))


def _track(alpha: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame centre [T, 2] (x, y), in-window mass [T] and purity [T] of a soft mask [T, H, W]."""
    t, h, w = alpha.shape
    xs = np.arange(w, dtype=np.float32) + 0.5
    ys = np.arange(h, dtype=np.float32) + 0.5
    total = alpha.sum((1, 2))
    safe = np.maximum(total, 1e-6)[:, None]
    cx = xs[np.argmax(np.cumsum(alpha.sum(1), 1) >= safe / 2, axis=1)]
    cy = ys[np.argmax(np.cumsum(alpha.sum(2), 1) >= safe / 2, axis=1)]
    radius = WINDOW * s
    mass = total
    for _ in range(2):
        win = alpha * (np.abs(ys[None, :, None] - cy[:, None, None]) <= radius)
        win = win * (np.abs(xs[None, None, :] - cx[:, None, None]) <= radius)
        mass = win.sum((1, 2))
        m = np.maximum(mass, 1e-6)
        cx = np.where(mass > 0, (win.sum(1) * xs).sum(1) / m, cx)
        cy = np.where(mass > 0, (win.sum(2) * ys).sum(1) / m, cy)
    purity = np.where(total > 0, mass / np.maximum(total, 1e-6), 0.0)
    return np.stack([cx, cy], 1), mass, purity


def _shape_fit(
    alpha: np.ndarray, centres: np.ndarray, frames: np.ndarray, area: float
) -> tuple[np.ndarray, np.ndarray]:
    """Template matching (step 5 of the module doc): error and fitted box side in pixels, per shape of `SHAPES`."""
    area = max(area, 4.0)
    p = int(math.ceil(1.25 * math.sqrt(area))) + 3  # reaches the apex of a triangle of that area, blurred
    n = 2 * p + 1
    padded = np.pad(alpha[frames], ((0, 0), (p, p), (p, p)))
    ic = np.floor(centres[frames, 1]).astype(int)
    jc = np.floor(centres[frames, 0]).astype(int)
    offs = np.arange(n)
    k = np.arange(len(frames))[:, None, None]
    obs = padded[k, ic[:, None, None] + offs[None, :, None], jc[:, None, None] + offs[None, None, :]]
    ring = np.maximum(np.abs(offs - p)[:, None], np.abs(offs - p)[None, :]) >= p - 1
    obs = obs - np.minimum(obs[:, ring], 0.3).mean(1)[:, None, None]  # local zero point (e.g. clipped noise)
    py = (ic[:, None] - p + offs[None, :] + 0.5).astype(np.float32)  # [K, n] pixel-centre y of the patch rows
    px = (jc[:, None] - p + offs[None, :] + 0.5).astype(np.float32)
    dx = (px[:, None, :] - centres[frames, 0][:, None, None])[None]  # [1, K, 1, n]
    mats = np.stack([_blur_matrix(n, sg) for sg in TEMPLATE_SIGMAS])[:, None]  # [G, 1, n, n]
    mats_t = mats.transpose(0, 1, 3, 2)
    obs_mass = max(float(obs.sum()) / len(frames), 1e-6)
    norm = max(float((obs**2).sum()), 1e-6)
    errors, extents = [], []
    for shape in SHAPES:
        e = np.full((len(TEMPLATE_SIGMAS), 1, 1, 1), math.sqrt(area / SHAPE_FILL[shape]), dtype=np.float32)
        for step in range(FIT_STEPS + 1):
            cy = centres[frames, 1][None, :, None, None] - SHAPE_CENTROID_OFFSET[shape] * e  # [G, K, 1, 1]
            tmpl = shape_coverage(shape, dx, py[None, :, :, None] - cy, e)  # [G, K, n, n]
            blurred = mats @ tmpl @ mats_t
            blurred = blurred / np.maximum(blurred.max((1, 2, 3), keepdims=True), 1e-6)  # peak 1, as obs
            if step < FIT_STEPS:  # rescale so that the template has the observed mass
                mass = blurred.sum((1, 2, 3), keepdims=True) / len(frames)
                e = e * np.sqrt(obs_mass / np.maximum(mass, 1e-6)).clip(0.8, 1.5)
        err = ((blurred - obs[None]) ** 2).sum((1, 2, 3)) / norm
        g = int(np.argmin(err))
        errors.append(float(err[g]))
        extents.append(float(e[g, 0, 0, 0]))
    return np.array(errors), np.array(extents)


@dataclass
class _Clip:
    """Per-clip quantities shared by the checks of every object."""

    video: np.ndarray  # [3, T, H, W] as given (clipped)
    bg: np.ndarray  # [3, 1, 1, 1] background colour
    diff: np.ndarray  # [3, T, H, W] 3×3-smoothed video minus background
    dist: np.ndarray  # [T, H, W] ‖diff‖
    fg: np.ndarray  # [T, H, W] bool
    labels: np.ndarray  # [T, H, W] index into COLOURS, −1 for none


def _pixel_labels(diff: np.ndarray, dist: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Step 2 of the module doc: palette index per pixel (−1: background or unreadable)."""
    d_fg = diff[:, fg]  # [3, N] deviations of the foreground pixels from the background
    chromatic = (d_fg.max(0) - d_fg.min(0)) > CHROMA_RATIO * dist[fg]
    hue_gap = np.abs(_hue(d_fg)[None] - _PALETTE_HUES[:, None])
    hue_gap = np.minimum(hue_gap, 360.0 - hue_gap)
    nearest = np.argmin(hue_gap, 0)
    fg_labels = np.full(d_fg.shape[1], -1, dtype=np.int16)
    ok_hue = chromatic & (hue_gap[nearest, np.arange(len(nearest))] <= HUE_TOLERANCE)
    fg_labels[ok_hue] = np.asarray(_CHROMATIC, dtype=np.int16)[nearest[ok_hue]]
    fg_labels[~chromatic & (d_fg.mean(0) > WHITE_MIN_GAIN)] = _WHITE
    labels = np.full(dist.shape, -1, dtype=np.int16)
    labels[fg] = fg_labels
    return labels


def _check_object(clip: _Clip, obj: ObjectSpec, other_colours: list[int]) -> dict[str, Any]:
    """Steps 3–5 and 7 for one prompt object: scores, correctness, measurements and the pixels it explains."""
    _, t, h, w = clip.video.shape
    s = min(h, w)
    res = dict.fromkeys(_OBJECT_ATTRIBUTES, 0.0)
    ok = dict.fromkeys(_OBJECT_ATTRIBUTES, False)
    info: dict[str, Any] = {"found": 0.0}
    result = {"scores": res, "correct": ok, "measured": info, "explained": None}
    mask = clip.labels == _COLOUR_NAMES.index(obj.colour)
    if not mask.any():
        return result
    u = (_YCC @ clip.diff[:, mask] * clip.dist[mask]).sum(1)  # the object's colour direction, weighted YCbCr
    weights = (u / max(float(np.linalg.norm(u)), 1e-6)) @ _YCC  # projection onto u, as weights of RGB
    level = _project(weights, clip.diff)
    ref = max(float(np.percentile(level[mask], 98)), 1e-3)
    _, label_count, purity = _track(mask.astype(np.float32), s)
    others = np.isin(clip.labels, other_colours)
    body = clip.fg & ~others & _dilate2(mask)
    alpha = np.where(body, np.clip(level / ref, 0.0, 1.0), 0.0).astype(np.float32)
    centres, mass, _ = _track(alpha, s)
    found = label_count >= MIN_AREA * h * w
    info["found"] = frac = float(found.mean())
    res["colour"] = frac * float(purity[found].mean()) if found.any() else 0.0
    ok["colour"] = frac >= MIN_FOUND
    if found.sum() < 2:
        return result

    # Step 4: the track.
    idx = np.nonzero(found)[0].astype(np.float64)
    design = np.stack([np.ones_like(idx), idx], 1)
    coef, *_ = np.linalg.lstsq(design, centres[found].astype(np.float64), rcond=None)
    rms = float(np.sqrt(((design @ coef - centres[found]) ** 2).sum(1).mean())) / s
    disp = coef[1] * (t - 1) / s
    mag = float(np.hypot(*disp))
    angle = math.degrees(math.atan2(-disp[1], disp[0]))
    direction = "still"
    if mag >= STILL_MAX:
        direction = min(_DIRECTION_ANGLES, key=lambda d: abs((angle - _DIRECTION_ANGLES[d] + 180) % 360 - 180))
    if obj.direction == "still":
        res["direction"] = math.exp(-((mag / STILL_MAX) ** 2))
        res["speed"], ok["speed"] = 1.0, True
    else:
        delta = math.radians(angle - _DIRECTION_ANGLES[obj.direction])
        res["direction"] = 0.5 * (1 + math.cos(delta)) * min(1.0, mag / STILL_MAX)
        res["speed"] = _log_score(mag, SPEEDS[obj.speed])
        ok["speed"] = direction != "still" and _nearest_log(mag, SPEEDS) == obj.speed
    ok["direction"] = direction == obj.direction
    res["smoothness"] = frac * math.exp(-((rms / SMOOTH_RMS) ** 2))
    ok["smoothness"] = rms < SMOOTH_RMS and ok["colour"]

    # Step 5: shape and size.
    med = float(np.median(mass[found]))
    steady = np.nonzero(found & (np.abs(mass - med) <= 0.3 * med))[0]
    if len(steady) == 0:  # no frame with a usable mask (e.g. a noise video): shape and size stay unread
        return result
    steady = steady[np.round(np.linspace(0, len(steady) - 1, min(8, len(steady)))).astype(int)]
    raw = np.clip(_project(weights, clip.video - clip.bg) / ref, -0.5, 1.0)
    errors, extents = _shape_fit(np.where(others, 0.0, raw).astype(np.float32), centres, steady, med)
    best = SHAPES[int(np.argmin(errors))]
    mine = errors[SHAPES.index(obj.shape)]
    rival = float(np.min(np.delete(errors, SHAPES.index(obj.shape))))
    res["shape"] = 1.0 / (1.0 + (max(mine, 1e-9) / max(rival, 1e-9)) ** 3)
    ok["shape"] = best == obj.shape
    extent = float(extents[SHAPES.index(best)]) / s
    res["size"] = _log_score(extent, SIZES[obj.size])
    ok["size"] = _nearest_log(extent, SIZES) == obj.size

    # Step 6: the pixels this object explains.
    ys = (np.arange(h, dtype=np.float32) + 0.5)[None, :, None]
    xs = (np.arange(w, dtype=np.float32) + 0.5)[None, None, :]
    radius = 0.75 * extent * s + 0.05 * s
    near = (xs - centres[:, 0, None, None]) ** 2 + (ys - centres[:, 1, None, None]) ** 2 <= radius**2
    result["explained"] = near & found[:, None, None]
    info.update(
        shape=best,
        size=_nearest_log(extent, SIZES),
        direction=direction,
        speed=_nearest_log(mag, SPEEDS) if direction != "still" else None,
        displacement=(float(disp[0]), float(disp[1])),
        extent=extent,
        rms=rms,
        shape_errors=dict(zip(SHAPES, errors.round(4).tolist())),
    )
    return result


def _analyse(video: np.ndarray, spec: SceneSpec) -> dict[str, Any]:
    _, t, h, w = video.shape
    s = min(h, w)
    border = max(1, int(math.ceil(s / 32)))
    edge = np.ones((h, w), dtype=bool)
    edge[border:-border, border:-border] = False
    bg = np.median(video[:, :, edge], axis=(1, 2)).astype(np.float32)
    bg_luma = float(bg.mean())
    bg_class = min(BACKGROUNDS, key=lambda b: abs(np.mean(BACKGROUNDS[b]) - bg_luma))
    bg_score = max(0.0, 1.0 - abs(float(np.mean(BACKGROUNDS[spec.background])) - bg_luma) / 0.45)

    bg = bg[:, None, None, None]
    diff = _box3(video) - bg
    dist = np.sqrt((diff**2).sum(0))
    fg = dist > FG_THRESHOLD
    clip = _Clip(video=video, bg=bg, diff=diff, dist=dist, fg=fg, labels=_pixel_labels(diff, dist, fg))
    colours = [_COLOUR_NAMES.index(o.colour) for o in spec.objects]
    objects = [_check_object(clip, o, [c for c in colours if c != colours[i]]) for i, o in enumerate(spec.objects)]

    explained = np.zeros((t, h, w), dtype=bool)
    for o in objects:
        near = o.pop("explained")
        if near is not None:
            explained |= near
    min_mass = MIN_AREA * h * w
    strong = dist > max(FG_THRESHOLD, 0.3 * float(np.percentile(dist, 99)))
    extra = float(np.median((strong & ~explained).sum((1, 2))))

    out: dict[str, Any] = {}
    for attr in _OBJECT_ATTRIBUTES:
        out[attr] = float(np.mean([o["scores"][attr] for o in objects]))
        out[f"{attr}_ok"] = all(o["correct"][attr] for o in objects)
    out["background"], out["background_ok"] = bg_score, bg_class == spec.background
    out["count"], out["count_ok"] = math.exp(-extra / min_mass), extra < min_mass
    out["score"] = float(np.mean([out[a] for a in ATTRIBUTES]))
    out["success"] = all(out[f"{a}_ok"] for a in ATTRIBUTES)
    out["objects"] = objects
    out["measured_background"] = bg_class
    return out


def verify(video: Any, spec: SceneSpec | str) -> dict[str, Any]:
    """Check one video float [3, T, H, W] in [0, 1] (numpy or torch) against a scene or its canonical caption.

    Returns graded scores in [0, 1] for each of `ATTRIBUTES` and `score` (their mean), a boolean `<attr>_ok` for
    each, `success` (all correct), plus `objects` (per-object scores, correctness and measurements) and
    `measured_background`."""
    return _analyse(_to_numpy(video), _as_spec(spec))


def verify_batch(videos: Any, specs: list[SceneSpec] | list[str]) -> dict[str, np.ndarray]:
    """`verify` over a batch [B, 3, T, H, W]: a dict of arrays [B] (float scores, bool `*_ok` and `success`)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(videos, torch.Tensor):
        videos = videos.detach().float().cpu().numpy()
    if len(videos) != len(specs):
        raise ValueError(f"got {len(videos)} videos and {len(specs)} specs")
    results = [verify(v, s) for v, s in zip(videos, specs)]
    keys = [*ATTRIBUTES, "score", *(f"{a}_ok" for a in ATTRIBUTES), "success"]
    return {k: np.array([r[k] for r in results]) for k in keys}


def verifier_accuracy(
    n: int = 300,
    *,
    degrade: bool = False,
    num_frames: int = 17,
    height: int = 64,
    width: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure the verifier on `n` random scenes: success on their ground-truth clips, and false success on clips
    rendered (same seed) from `mutate(spec)`, checked against the original spec; optionally both degraded with
    `degrade.degrade`. Returns rates, per-attribute accuracy on ground truth, per-mutation false success, and
    the mean verification time per clip in ms."""
    from .degrade import degrade as degrade_video

    rng = np.random.default_rng(seed)
    gt_ok = {a: 0 for a in ATTRIBUTES}
    successes = false_successes = 0
    by_kind: dict[str, list[int]] = {}
    elapsed = 0.0
    for _ in range(n):
        spec = random_scene(rng)
        kind = str(rng.choice(applicable_mutations(spec)))
        other = mutate(spec, rng, kind)
        clip_seed = int(rng.integers(2**31))
        videos = [render(x, num_frames=num_frames, height=height, width=width, seed=clip_seed) for x in (spec, other)]
        if degrade:
            videos = [degrade_video(v, rng) for v in videos]
        start = time.perf_counter()
        truth, fake = verify(videos[0], spec), verify(videos[1], spec)
        elapsed += time.perf_counter() - start
        successes += truth["success"]
        false_successes += fake["success"]
        for a in ATTRIBUTES:
            gt_ok[a] += truth[f"{a}_ok"]
        by_kind.setdefault(kind, []).append(int(fake["success"]))
    return {
        "n": n,
        "degraded": degrade,
        "success_rate": successes / n,
        "false_success_rate": false_successes / n,
        "attribute_accuracy": {a: v / n for a, v in gt_ok.items()},
        "false_success_by_mutation": {k: (float(np.mean(v)), len(v)) for k, v in sorted(by_kind.items())},
        "ms_per_clip": 1000 * elapsed / (2 * n),
    }
