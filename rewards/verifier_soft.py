"""`verifier_soft`: a differentiable reading of the Shapes verifier, for reward backprop (DRaFT / ReFL).

The verifier (`vidpost.shapes.verifier`) thresholds, labels and template-matches in numpy: exact, but without a
gradient. This reward measures the same scene attributes with soft, differentiable operations in torch, from a
video [B, 3, T, H, W] in [0, 1] and the scene parsed from each canonical caption (S = min(H, W)):

- background b: the per-channel median of the frame border (⌈S/32⌉ px, all frames); score
  1 − |mean(b) − mean(expected)| / 0.45, floored at 0 (the verifier's);
- each object's soft coverage, read like the verifier's through the hue of the deviation d = p − b from the
  background (robust to blur, washing out and colour shifts): a pixel is chromatic by the soft gates of
  ‖chroma(d)‖/‖d‖ > 0.25 (chroma: d minus its grey component) and ‖d‖ > 0.08, and its colour is the softmax over the
  chromatic palette of κ·cos(chroma(d), chroma(colour)) (κ = `kappa`, 30: a soft nearest hue); white is
  "not chromatic and brighter than b by 0.1". Coverage m = membership · clip(level / r, 0, 1) with level the
  projection of d on the object's colour − b and r its 98th percentile over members (the object's contrast,
  so Σm is its area in pixels even when blurred). Per frame: mass M_t = Σm, centroid c_t;
  found_t = sigmoid((M_t − a)/(a/4)) with a = `MIN_AREA`·H·W; colour score = mean_t found_t;
- track: the found-weighted least-squares line through c_t; D = slope·(T − 1)/S; direction, speed and
  smoothness scores exactly as the verifier grades them from D and the fit's residual rms;
- size: extent = √(found-weighted mean M_t / fill(shape)) / S, graded like the verifier's (log-Gaussian);
- count: strong foreground f = sigmoid((‖p − b‖ − θ)/0.03), θ = max(`FG_THRESHOLD`, 0.3·99th percentile of
  ‖p − b‖) like the verifier's (which smooths by a 3×3 box first; the percentile here is over at most 2²⁰
  evenly spaced pixels), outside every object's soft disc (radius 0.75·extent·S + 0.05·S around its
  centroid); score exp(−median_t Σ f·(1 − disc) / a).
Soft steps subtract their floor, so pixels far from a threshold weigh exactly 0. Shape is not read (no cheap differentiable template match). Score: the mean of the seven attributes
(`ATTRIBUTES_SOFT`), averaged over objects; components: each attribute. A prompt that does not parse scores 0
(`unparsed`). `differentiable = True`: `_score` keeps the graph (the registry's `__call__` runs it without).
"""

from __future__ import annotations

import math

import torch

from vidpost.shapes.captions import parse_caption
from vidpost.shapes.verifier import FG_THRESHOLD, MIN_AREA, SMOOTH_RMS, STILL_MAX
from vidpost.shapes.world import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPE_FILL, SIZES, SPEEDS, SceneSpec

from .base import Reward, RewardOutput, register

ATTRIBUTES_SOFT = ("colour", "size", "direction", "speed", "background", "count", "smoothness")
_LOG_SIGMA = 0.15


def _log_score(value: torch.Tensor, target: float) -> torch.Tensor:
    return torch.exp(-(torch.log(value.clamp_min(1e-6) / target) ** 2) / (2 * _LOG_SIGMA**2))


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile of the flattened x, on at most 2²⁰ evenly spaced elements (torch.quantile refuses more than
    2²⁴, and a full-size video has more)."""
    x = x.flatten()
    step = max(1, x.numel() // (1 << 20))
    return torch.quantile(x[::step], q)


def _gate(x: torch.Tensor, threshold: float, width: float) -> torch.Tensor:
    """A soft step: sigmoid((x − threshold)/width), minus its floor so that x far below the threshold is exactly
    0 (a 64×64 clip has 4096 pixels per frame: a floor of 0.005 would read as 20 pixels of stray foreground)."""
    return ((torch.sigmoid((x - threshold) / width) - 0.01).clamp_min(0)) / 0.99


_CHROMATIC = [c for c in COLOURS if c != "white"]


def _chroma_directions(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[K, 3] unit chroma vectors (the colour minus its grey component) of the chromatic palette colours."""
    pal = torch.tensor([COLOURS[c] for c in _CHROMATIC], device=device, dtype=dtype)
    chroma = pal - pal.mean(1, keepdim=True)
    return chroma / chroma.norm(dim=1, keepdim=True)


def soft_scene_scores(video: torch.Tensor, spec: SceneSpec, *, kappa: float = 30.0) -> dict[str, torch.Tensor]:
    """The module doc's attribute scores (0-dim tensors with a graph to `video` [3, T, H, W]) for one clip."""
    _, t, h, w = video.shape
    s = min(h, w)
    border = max(1, math.ceil(s / 32))
    edge = torch.ones(h, w, dtype=torch.bool, device=video.device)
    edge[border:-border, border:-border] = False
    bg = video[:, :, edge].flatten(1).median(dim=1).values  # [3]
    expected_bg = sum(BACKGROUNDS[spec.background]) / 3
    scores: dict[str, list[torch.Tensor]] = {a: [] for a in ATTRIBUTES_SOFT}
    scores["background"].append((1 - (bg.mean() - expected_bg).abs() / 0.45).clamp_min(0))
    area = MIN_AREA * h * w
    d = video - bg.view(3, 1, 1, 1)
    dist = torch.sqrt((d**2).sum(0) + 1e-10)
    chroma = d - d.mean(0, keepdim=True)
    rho = torch.sqrt((chroma**2).sum(0) + 1e-10)
    chromatic = _gate(rho / dist, 0.25, 0.03) * _gate(dist, 0.08, 0.02)
    # soft nearest palette hue: softmax over the chromatic colours of κ·cos(angle between chroma vectors)
    cos = torch.einsum("kc,cthw->kthw", _chroma_directions(video.device, video.dtype), chroma / rho)
    hue_share = torch.softmax(kappa * cos, dim=0)
    ys = torch.arange(h, device=video.device, dtype=video.dtype) + 0.5
    xs = torch.arange(w, device=video.device, dtype=video.dtype) + 0.5
    frames = torch.arange(t, device=video.device, dtype=video.dtype)
    covered = torch.zeros(t, h, w, device=video.device, dtype=video.dtype)
    for obj in spec.objects:
        target = torch.tensor(COLOURS[obj.colour], device=video.device, dtype=video.dtype) - bg
        if obj.colour == "white":
            member = (1 - chromatic) * _gate(d.mean(0), 0.1, 0.02)
        else:
            member = chromatic * hue_share[_CHROMATIC.index(obj.colour)]
        level = torch.einsum("c,cthw->thw", target / target.norm().clamp_min(1e-3), d)
        strong = level[member > 0.5]
        ref = _quantile(strong, 0.98) if strong.numel() >= 4 else target.norm()
        m = member * (level / ref.clamp_min(1e-3)).clamp(0, 1)  # soft coverage [T, H, W]
        mass = m.sum((1, 2))
        found = torch.sigmoid((mass - area) / (area / 4))
        scores["colour"].append(found.mean())
        safe = mass.clamp_min(1e-6)
        centre = torch.stack([(m.sum(1) * xs).sum(1) / safe, (m.sum(2) * ys).sum(1) / safe], 1)  # [T, 2] (x, y)
        wt = found / found.sum().clamp_min(1e-6)
        t_bar = (wt * frames).sum()
        c_bar = (wt[:, None] * centre).sum(0)
        dt = frames - t_bar
        slope = (wt[:, None] * dt[:, None] * (centre - c_bar)).sum(0) / (wt * dt**2).sum().clamp_min(1e-6)
        resid = centre - (c_bar + dt[:, None] * slope)
        rms = torch.sqrt((wt * (resid**2).sum(1)).sum() + 1e-12) / s
        disp = slope * (t - 1) / s
        mag = torch.sqrt((disp**2).sum() + 1e-10)
        if obj.direction == "still":
            scores["direction"].append(torch.exp(-((mag / STILL_MAX) ** 2)))
            scores["speed"].append(torch.ones((), device=video.device, dtype=video.dtype))
        else:
            u = torch.tensor(DIRECTIONS[obj.direction], device=video.device, dtype=video.dtype)
            cos_d = (disp * u).sum() / mag
            scores["direction"].append(0.5 * (1 + cos_d) * (mag / STILL_MAX).clamp(max=1.0))
            scores["speed"].append(_log_score(mag, SPEEDS[obj.speed]))
        scores["smoothness"].append(found.mean() * torch.exp(-((rms / SMOOTH_RMS) ** 2)))
        extent = torch.sqrt((wt * mass).sum() / SHAPE_FILL[obj.shape] + 1e-12) / s
        scores["size"].append(_log_score(extent, SIZES[obj.size]))
        radius = 0.75 * extent.detach() * s + 0.05 * s
        dx = xs[None, None, :] - centre[:, 0, None, None]
        dy = ys[None, :, None] - centre[:, 1, None, None]
        disc = torch.sigmoid(radius - torch.sqrt(dx**2 + dy**2 + 1e-10))
        covered = torch.maximum(covered, disc * found[:, None, None])
    strong = max(FG_THRESHOLD, 0.3 * float(_quantile(dist.detach(), 0.99)))
    extra = (_gate(dist, strong, 0.03) * (1 - covered)).sum((1, 2)).median()
    scores["count"].append(torch.exp(-extra / area))
    return {a: torch.stack(v).mean() for a, v in scores.items()}


class SoftVerifierReward(Reward):
    name = "verifier_soft"
    differentiable = True

    def __init__(self, *, kappa: float = 30.0, device: str = "cpu", dtype=None) -> None:
        super().__init__(device=device, dtype=torch.float32)
        if kappa <= 0:
            raise ValueError(f"verifier_soft reward: kappa must be positive, got {kappa}")
        self.kappa = kappa

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        zero = videos.sum() * 0  # keeps a graph (and the device) for unparsed prompts
        rows: dict[str, list[torch.Tensor]] = {a: [] for a in (*ATTRIBUTES_SOFT, "unparsed")}
        totals = []
        for video, prompt in zip(videos, prompts):
            try:
                spec = parse_caption(prompt)
            except ValueError:
                for a in ATTRIBUTES_SOFT:
                    rows[a].append(zero)
                rows["unparsed"].append(zero + 1)
                totals.append(zero)
                continue
            sc = soft_scene_scores(video.float(), spec, kappa=self.kappa)
            for a in ATTRIBUTES_SOFT:
                rows[a].append(sc[a])
            rows["unparsed"].append(zero)
            totals.append(torch.stack([sc[a] for a in ATTRIBUTES_SOFT]).mean())
        return RewardOutput(torch.stack(totals), {k: torch.stack(v) for k, v in rows.items()})


@register("verifier_soft", bounds=(0.0, 1.0))
def _soft(**config) -> SoftVerifierReward:
    return SoftVerifierReward(**config)
