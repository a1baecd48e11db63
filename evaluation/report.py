"""Writing an evaluation: scores.csv/json, summary and comparison tables (markdown), plots."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidpost.evaluation.stats import component, component_names, finite, reward_names
from vidpost.outputs import save_figure, write_json


def _rel(path: str | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return os.path.relpath(Path(path).resolve(), root.resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def dump_json(path: Path, data: Any) -> None:
    write_json(path, _json_safe(data), indent=1, ensure_ascii=False)


def write_scores(out: Path, records: list[dict[str, Any]], weights: dict[str, float], weighted: bool = False) -> None:
    """`scores.json` (the records, video paths relative to `out`; `weighted`: whether the user gave the weights) and
    `scores.csv` (one row per video: id, prompt_id, prompt, seed, status, error, video, with `weighted` the weighted
    total, then each reward and its `<reward>/<component>`s)."""
    names = reward_names(records, weights)
    comps = component_names(records, names)
    rows = []
    for rec in records:
        row = {k: rec.get(k) for k in ("id", "prompt_id", "prompt", "seed", "status", "error")}
        row["video"] = _rel(rec.get("video"), out)
        row |= {"total": rec.get("total"), "scores": rec.get("scores", {}), "components": rec.get("components", {})}
        rows.append(row)
    dump_json(out / "scores.json", {"weights": weights, "weighted": weighted, "records": rows})
    columns = ["id", "prompt_id", "prompt", "seed", "status", "error", "video"] + (["total"] if weighted else [])
    for name in names:
        columns += [name] + [c for c in comps if c.startswith(f"{name}/")]
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            cells = []
            for col in columns:
                if col in names:
                    v = row["scores"].get(col)
                elif "/" in col and col.split("/", 1)[0] in names:
                    v = component(row, col)
                else:
                    v = row.get(col)
                cells.append("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
            w.writerow(cells)


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A previous eval output folder: `{dir, records, weights, weighted, summary}` (video paths made absolute)."""
    run_dir = Path(run_dir)
    f = run_dir / "scores.json"
    if not f.is_file():
        raise ValueError(f"{run_dir} is not a vidpost eval output folder (no scores.json)")
    data = json.loads(f.read_text())
    records = data["records"]
    for rec in records:
        if rec.get("video") and not Path(rec["video"]).is_absolute():
            rec["video"] = str((run_dir / rec["video"]).resolve())
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    weighted = bool(data.get("weighted", False))
    return {
        "dir": run_dir,
        "records": records,
        "weights": data.get("weights", {}),
        "weighted": weighted,
        "summary": summary,
    }


def fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.3e}"
    return str(x)


def _ci(ci: Sequence[float] | None) -> str:
    return "–" if not ci else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def summary_rows(
    by_name: dict[str, dict[str, Any]], weights: dict[str, float] | None = None, total: dict[str, Any] | None = None
) -> list[dict[str, str]]:
    """Formatted table rows of `stats` per name (+ a `weighted total` row when given)."""
    rows = []
    entries = list(by_name.items()) + ([("weighted total", total)] if total else [])
    for name, s in entries:
        rows.append(
            {
                "reward": name,
                "weight": fmt((weights or {}).get(name)) if weights and name in weights else "",
                "n": str(s["n"]),
                "mean": fmt(s["mean"]),
                "ci95": _ci(s["ci95"]),
                "std": fmt(s["std"]),
                "median": fmt(s["median"]),
                "min": fmt(s["min"]),
                "max": fmt(s["max"]),
                "wilson95": _ci(s.get("wilson95")),
            }
        )
    return rows


def summary_table_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """Each reward on its own; the weighted total only when the user gave weights."""
    weights = summary["weights"] if summary.get("weighted") else None
    return summary_rows(summary["rewards"], weights, summary.get("total") if summary.get("weighted") else None)


def compare_rows(comparison: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, c in comparison["rewards"].items():
        if not c["n"]:
            rows.append({"reward": name, "n": "0"})
            continue
        rows.append(
            {
                "reward": "weighted total" if name == "total" else name,
                "n": str(c["n"]),
                "this": fmt(c["mean_this"]),
                "other": fmt(c["mean_other"]),
                "delta": f"{c['delta']:+.4g}",
                "ci95": _ci(c["delta_ci95"]),
                "win_rate": f"{c['win_rate']:.3f}",
                "wtl": f"{c['wins']}/{c['ties']}/{c['losses']}",
                "sign": "pos"
                if c["delta"] > 0 and c["delta_ci95"] and c["delta_ci95"][0] > 0
                else "neg"
                if c["delta"] < 0 and c["delta_ci95"] and c["delta_ci95"][1] < 0
                else "",
            }  # fmt: skip
        )
    return rows


def summary_markdown(summary: dict[str, Any], comparison: dict[str, Any] | None = None, other: str = "") -> str:
    lines = [
        f"{summary['n_videos']} videos ({summary['n_prompts']} prompts): {summary['n_ok']} scored, "
        f"{summary['n_failed']} failed.",
        "",
        "| reward | weight | n | mean | 95% CI (t) | std | median | min | max | Wilson 95% |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary_table_rows(summary):
        lines.append(
            f"| {r['reward']} | {r['weight']} | {r['n']} | **{r['mean']}** | {r['ci95']} | {r['std']} | "
            f"{r['median']} | {r['min']} | {r['max']} | {r['wilson95']} |"
        )
    lines += ["", f"CI: {summary['ci_method']}."]
    if summary["failures"]:
        lines += ["", "## Failures", "", "| id | status | error |", "|---|---|---|"]
        lines += [f"| {f['id']} | {f['status']} | {f['error']} |".replace("\n", " ") for f in summary["failures"]]
    if comparison is not None:
        lines += ["", f"## Compared with {other}", "", compare_markdown(comparison)]
    return "\n".join(lines) + "\n"


def run_labels(this_dir: str | None, other_dir: str | None) -> tuple[str, str]:
    """The two runs' names in a comparison: their folder names, when both are known and differ."""
    a, b = Path(this_dir or "").name, Path(other_dir or "").name
    return (a, b) if a and b and a != b else ("this run", "the other run")


def ranking_sentence(ranking: dict[str, Any], labels: tuple[str, str] = ("this run", "the other run")) -> str:
    """The comparison's headline: which run ranks first, by the rewards in order (the first one listed is the
    primary), and the reward and paired difference that decided it."""
    order = ", then ".join(ranking["order"])
    if ranking["winner"] is None:
        return f"Ranking by {order}: no reward separates the runs (every paired 95% CI contains 0)."
    first, second = labels if ranking["winner"] == "this" else labels[::-1]
    d = ranking["delta"] if ranking["winner"] == "this" else -ranking["delta"]
    lo, hi = ranking["delta_ci95"] if ranking["winner"] == "this" else [-x for x in ranking["delta_ci95"][::-1]]
    return (
        f"Ranking by {order}: {first} ranks above {second}, decided by {ranking['decided_by']} "
        f"(Δ {d:+.4g}, 95% CI [{fmt(lo)}, {fmt(hi)}])."
    )


def compare_markdown(comparison: dict[str, Any]) -> str:
    lines = [
        f"{comparison['n_common']} videos in both runs ({len(comparison['only_this'])} only in this, "
        f"{len(comparison['only_other'])} only in the other).",
        "",
        "| reward | pairs | this | other | Δ (this − other) | 95% CI | win rate | W/T/L |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if comparison.get("ranking"):
        labels = run_labels(comparison.get("this_dir"), comparison.get("other_dir"))
        lines = [f"**{ranking_sentence(comparison['ranking'], labels)}**", "", *lines]
    for r in compare_rows(comparison):
        if r["n"] == "0":
            lines.append(f"| {r['reward']} | 0 | – | – | – | – | – | – |")
        else:
            lines.append(
                f"| {r['reward']} | {r['n']} | {r['this']} | {r['other']} | **{r['delta']}** | {r['ci95']} | "
                f"{r['win_rate']} | {r['wtl']} |"
            )
    lines += ["", f"Method: {comparison['method']}."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- plots


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write and close a matplotlib figure."""
    return save_figure(fig, path)


def make_plots(
    out: Path,
    records: list[dict[str, Any]],
    names: Sequence[str],
    *,
    other: list[dict[str, Any]] | None = None,
    labels: tuple[str, str] = ("this", "other"),
) -> list[Path]:
    """`plots/hist_<reward>.png` (with the other run overlaid when given), `plots/box.png` (one panel per reward)
    and with `other` `plots/paired.png` (this vs other per video). Returns the files, in report order."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plots = out / "plots"
    if plots.exists():
        for f in plots.glob("*.png"):
            f.unlink()
    plots.mkdir(parents=True, exist_ok=True)

    def vals(recs: list[dict], name: str) -> list[float]:
        return [v for r in recs if (v := finite(r.get("scores", {}).get(name))) is not None]

    files = []
    for name in names:
        a = vals(records, name)
        if not a:
            continue
        fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=90)
        b = vals(other, name) if other is not None else []
        lo, hi = min(a + b), max(a + b)
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 21)
        ax.hist(a, bins=bins, alpha=0.65, label=f"{labels[0]} (n={len(a)})", color="#3b6fb6")
        ax.axvline(float(np.mean(a)), color="#3b6fb6", ls="--", lw=1)
        if b:
            ax.hist(b, bins=bins, alpha=0.5, label=f"{labels[1]} (n={len(b)})", color="#d9822b")
            ax.axvline(float(np.mean(b)), color="#d9822b", ls="--", lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("videos", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
        files.append(_save(fig, plots / f"hist_{safe_name(name)}.png"))

    present = [n for n in names if vals(records, n)]
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(1.2 + 1.9 * len(present), 2.9), dpi=90, squeeze=False)
        rng = np.random.default_rng(0)
        for ax, name in zip(axes[0], present):
            data = [vals(records, name)] + ([vals(other, name)] if other is not None else [])
            data = [d if d else [math.nan] for d in data]
            ax.boxplot(data, widths=0.5, showfliers=False)
            for j, d in enumerate(data, 1):
                ax.scatter(j + rng.uniform(-0.12, 0.12, len(d)), d, s=6, alpha=0.6, color="k")
            ax.set_xticks(range(1, len(data) + 1), list(labels[: len(data)]), fontsize=7)
            ax.set_title(name, fontsize=9)
            ax.tick_params(labelsize=7)
        files.append(_save(fig, plots / "box.png"))

    if other is not None:
        theirs = {r["id"]: r for r in other}
        panels = []
        for name in present:
            pairs = [
                (a, b)
                for r in records
                if r["id"] in theirs
                and (a := finite(r.get("scores", {}).get(name))) is not None
                and (b := finite(theirs[r["id"]].get("scores", {}).get(name))) is not None
            ]
            if pairs:
                panels.append((name, pairs))
        if panels:
            fig, axes = plt.subplots(1, len(panels), figsize=(0.6 + 2.6 * len(panels), 2.8), dpi=90, squeeze=False)
            for ax, (name, pairs) in zip(axes[0], panels):
                x, y = np.array(pairs).T
                ax.scatter(y, x, s=8, alpha=0.7)
                lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
                ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
                ax.set_xlabel(labels[1], fontsize=7)
                ax.set_ylabel(labels[0], fontsize=7)
                ax.set_title(name, fontsize=9)
                ax.tick_params(labelsize=7)
            files.append(_save(fig, plots / "paired.png"))
    return files
