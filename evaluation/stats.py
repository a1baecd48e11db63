"""Statistics of an evaluation: Student-t quantiles and intervals, the Wilson score interval, per-reward
summaries, and the paired comparison of two runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vidpost.rewards.base import reward_bounds

CI_METHOD = (
    "95% t-interval for the mean: mean ± t(0.975, n−1)·s/√n (s: sample std, ddof 1), clipped to the reward's range "
    "where it has one (e.g. temporal in [-1, 1]; `ci95_clipped` says so); metrics whose values are all 0/1 also get a "
    "95% Wilson score interval"
)
COMPARE_METHOD = (
    "joined on video id over pairs both runs scored; delta = mean of (this − other) with a 95% t-interval; "
    "win rate = fraction of pairs where this run is higher, ties count ½"
)

_Z975 = 1.959963984540054


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df (Abramowitz & Stegun 26.7.3–4, finite series)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # odd
        if df == 1:
            return 2 * theta / math.pi
        term, total = 1.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided `level` critical value of Student's t with `df` degrees of freedom (t(0.975, df) for 95%):
    exact (bisection on the closed-form CDF) up to df = 200, the Cornish–Fisher expansion beyond (error < 1e-6)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df > 200:
        if level != 0.95:
            raise ValueError("t_quantile: only level 0.95 is supported for df > 200")
        z, v = _Z975, float(df)
        return (
            z
            + (z**3 + z) / (4 * v)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
        )
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < level:
        hi *= 2
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, df) < level else (lo, mid)
    return 0.5 * (lo + hi)


def wilson(k: float, n: int, z: float = _Z975) -> tuple[float, float]:
    """95% Wilson score interval for a rate k / n."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / d
    lo, hi = c - h, c + h
    return (0.0 if lo < 1e-12 else lo), (1.0 if hi > 1 - 1e-12 else hi)


def stats(values: Sequence[float | None], bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """n, mean, std (ddof 1), sem, 95% t-interval `ci95`, median, min, max; `binary` and `wilson95` when every
    value is 0 or 1. Nones and non-finite values are left out. `bounds`: the range the metric lies in; an interval
    reaching past it is clipped to it (`ci95_clipped`: true)."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "sem": None, "ci95": None, "median": None, "min": None,
                "max": None, "binary": False}  # fmt: skip
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    sem = std / math.sqrt(n)
    half = t_quantile(n - 1) * sem if n > 1 else math.nan
    out = {
        "n": n,
        "mean": mean,
        "std": std,
        "sem": sem,
        "ci95": [mean - half, mean + half] if n > 1 else None,
        "median": float(np.median(x)),
        "min": float(x.min()),
        "max": float(x.max()),
        "binary": bool(np.all((x == 0) | (x == 1))),
    }
    if bounds is not None and out["ci95"] is not None:
        lo, hi = out["ci95"]
        clipped = [max(lo, float(bounds[0])), min(hi, float(bounds[1]))]
        if clipped != out["ci95"]:
            out["ci95"], out["ci95_clipped"] = clipped, True
    if out["binary"]:
        out["wilson95"] = list(wilson(float(x.sum()), n))
    return out


def reward_names(records: list[dict[str, Any]], weights: dict[str, float] | None = None) -> list[str]:
    names = list(weights or {})
    for rec in records:
        names += [n for n in rec.get("scores", {}) if n not in names]
    return names


def component_names(records: list[dict[str, Any]], names: list[str]) -> list[str]:
    """`<reward>/<component>` in first-seen order, grouped by reward."""
    out = []
    for name in names:
        for rec in records:
            out += [f"{name}/{c}" for c in rec.get("components", {}).get(name, {}) if f"{name}/{c}" not in out]
    return out


def component(rec: dict[str, Any], key: str) -> float | None:
    name, _, comp = key.partition("/")
    return rec.get("components", {}).get(name, {}).get(comp)


def summarise(records: list[dict[str, Any]], weights: dict[str, float], weighted: bool = False) -> dict[str, Any]:
    """Statistics per reward (`rewards`), per component (`components`) and, when the user gave weights
    (`weighted`), of the weighted `total`, over the videos that have the value; counts and the list of failures."""
    names = reward_names(records, weights)
    failures = [
        {k: r.get(k) for k in ("id", "prompt_id", "prompt", "video", "status", "error")}
        for r in records
        if r.get("status") != "ok"
    ]
    return {
        "n_videos": len(records),
        "n_ok": sum(r.get("status") == "ok" for r in records),
        "n_failed": len(failures),
        "n_prompts": len({r["prompt_id"] for r in records}),
        "weights": dict(weights),
        "weighted": weighted,
        "ci_method": CI_METHOD,
        "rewards": {n: stats([r.get("scores", {}).get(n) for r in records], reward_bounds(n)) for n in names},
        **({"total": stats([r.get("total") for r in records])} if weighted else {}),
        "components": {c: stats([component(r, c) for r in records]) for c in component_names(records, names)},
        "failures": failures,
    }


def compare_runs(
    records: list[dict[str, Any]],
    other: list[dict[str, Any]],
    names: Sequence[str],
    *,
    include_total: bool = False,
) -> dict[str, Any]:
    """Join two runs' records on video id; per reward (and `total`), over the pairs both scored: mean of this,
    of other, `delta` = mean paired difference (this − other) with `delta_ci95` (t), wins / ties / losses and
    `win_rate` = (wins + ties / 2) / n. Ties: equal to 1e-9 relative."""
    mine = {r["id"]: r for r in records}
    theirs = {r["id"]: r for r in other}
    common = [i for i in mine if i in theirs]
    keys = list(names) + (["total"] if include_total else [])
    result: dict[str, Any] = {
        "method": COMPARE_METHOD,
        "n_this": len(mine),
        "n_other": len(theirs),
        "n_common": len(common),
        "only_this": [i for i in mine if i not in theirs],
        "only_other": [i for i in theirs if i not in mine],
        "prompt_mismatch": [i for i in common if mine[i].get("prompt") != theirs[i].get("prompt")],
        "rewards": {},
    }

    def value(rec: dict, key: str) -> float | None:
        return finite(rec.get("total")) if key == "total" else finite(rec.get("scores", {}).get(key))

    for key in keys:
        pairs = [
            (a, b)
            for i in common
            if (a := value(mine[i], key)) is not None and (b := value(theirs[i], key)) is not None
        ]
        n = len(pairs)
        if n == 0:
            result["rewards"][key] = {"n": 0}
            continue
        a = np.array([p[0] for p in pairs])
        b = np.array([p[1] for p in pairs])
        ties = sum(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in pairs)
        wins = int(sum(x > y and not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in pairs))
        d = stats((a - b).tolist())
        result["rewards"][key] = {
            "n": n,
            "mean_this": float(a.mean()),
            "mean_other": float(b.mean()),
            "delta": d["mean"],
            "delta_std": d["std"],
            "delta_ci95": d["ci95"],
            "wins": wins,
            "ties": int(ties),
            "losses": n - wins - int(ties),
            "win_rate": (wins + 0.5 * ties) / n,
        }
    result["ranking"] = rank_runs(result["rewards"], list(names))
    return result


def rank_runs(by_reward: dict[str, dict[str, Any]], order: list[str]) -> dict[str, Any]:
    """Which run ranks first, by the rewards in `order` (the primary first): the first reward whose paired
    difference has a 95% CI excluding 0 decides; `winner` is "this", "other" or None (no reward separates them).
    Rewards are never summed for the ranking."""
    for name in order:
        c = by_reward.get(name, {})
        ci = c.get("delta_ci95")
        if ci and (ci[0] > 0 or ci[1] < 0):
            winner = "this" if ci[0] > 0 else "other"
            return {"order": order, "winner": winner, "decided_by": name, "delta": c["delta"], "delta_ci95": ci}
    return {"order": order, "winner": None, "decided_by": None}


def finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def paired_cells(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, str]:
    """The quality cells of a side-by-side table row (`row["success"]`, `row["score"]`: per-clip values paired with
    `ref`'s): success with its Wilson 95% interval, graded with its t interval (clipped to [0, 1]), and — for a row
    other than the reference — the paired graded delta with its interval (within [−1, 1]) and the success delta in
    points ("—" for the reference)."""
    s, g = stats(row["success"]), stats(row["score"], (0.0, 1.0))  # the graded score lies in [0, 1]
    lo, hi = s.get("wilson95", (s["mean"], s["mean"]))
    ci = g["ci95"] or [g["mean"], g["mean"]]
    cells = {
        "success": f"{100 * s['mean']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]",
        "graded": f"{g['mean']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
        "delta": "—",
        "delta_success": "—",
    }
    if row is not ref:
        d = stats([a - b for a, b in zip(row["score"], ref["score"], strict=True)], (-1.0, 1.0))
        dci = d["ci95"] or [d["mean"], d["mean"]]
        cells["delta"] = f"{d['mean']:+.3f} [{dci[0]:+.3f}, {dci[1]:+.3f}]"
        cells["delta_success"] = f"{100 * (s['mean'] - stats(ref['success'])['mean']):+.1f}"
    return cells
