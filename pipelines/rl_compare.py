"""The RL algorithms side by side on the Shapes world, at one budget of generated videos (`vidpost rl compare`).

    vidpost rl compare [--algorithms grpo grpo-indep nft awm rsft draft] [--videos 1536] [--out results/shapes-rl]
                       [--work runs/shapes-rl] [dotted.overrides applied to every run ...]

Every run starts from the shipped SFT model (`shapes`) with its preset (`VARIANTS`: `configs/shapes/grpo.yaml` for
GRPO, `configs/shapes/rl-draft.yaml` for draft, `configs/shapes/rl-nft.yaml` for the rest) and `train.max_steps` = videos / (prompts × group size), so each
generates the same number of training videos. A run resumes from its checkpoint when interrupted and is skipped
once its `final/` exists (its wall time accumulates in `<work>/<name>/wall.json`). Every final LoRA and the
SFT model generate the 64 held-out prompts × `--seeds` seeds, scored by the verifier (each once: kept in
`<work>/<name>/heldout.json`, so running the algorithms one at a time and then all of them assembles the table): the table
(`<out>/results.md`, `results.json`) has success (Wilson 95% interval) and graded score (t interval) with their
change from the SFT model, the guard (held-out temporal consistency, which nothing trains on) at the run's start and
end, the videos used and the wall time; `<out>/curves.png` has every run's training reward and held-out guard.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from vidpost.config import ArgumentParser
from vidpost.outputs import write_text

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "grpo": ("configs/shapes/grpo.yaml", ["algorithm=grpo"]),
    "grpo-indep": ("configs/shapes/grpo.yaml", ["algorithm=grpo", "rollout.shared_noise=false"]),
    "nft": ("configs/shapes/rl-nft.yaml", ["algorithm=nft"]),
    # AWM's reference settings: ghuber likelihood, clip range 1, KL 1e-3
    "awm": (
        "configs/shapes/rl-nft.yaml",
        ["algorithm=awm", "awm.weighting=ghuber", "train.clip_range=1.0", "train.kl_beta=1e-3"],
    ),
    # RSFT trains the conditional velocity: flow matching of the CFG-guided velocity on its own samples drifts the
    # model whatever is selected (results/shapes-rl/positive-controls.md), the conditional one much less
    "rsft": ("configs/shapes/rl-nft.yaml", ["algorithm=rsft", "rsft.k=2", "forward.guided=false"]),
    "draft": ("configs/shapes/rl-draft.yaml", ["algorithm=draft"]),  # = rl-nft.yaml with the verifier_soft reward
}


def run_variant(name: str, work: Path, videos: int, overrides: list[str]) -> dict[str, Any]:
    """Train variant `name` (or resume it, or skip it when finished) → {"final", "iterations", "videos", "seconds",
    "history", "guard"}."""
    from vidpost.config import load_config
    from vidpost.pipelines.rl import train
    from vidpost.rl.config import RLConfig

    preset, own = VARIANTS[name]
    out = work / name
    probe = load_config(RLConfig, ROOT / preset, [*own, *overrides])
    per_iteration = probe.rollout.prompts_per_step * probe.rollout.group_size
    iterations = max(1, videos // per_iteration)
    cfg = load_config(
        RLConfig, ROOT / preset, [*own, f"output_dir={out}", f"train.max_steps={iterations}", *overrides]
    )
    wall_file = out / "wall.json"
    seconds = json.loads(wall_file.read_text())["seconds"] if wall_file.exists() else 0.0
    if not (out / "final").exists():
        resume = "latest" if any(out.glob("checkpoints/step_*")) else None
        t0 = time.perf_counter()
        train(cfg, resume=resume)
        seconds += time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        write_text(wall_file, json.dumps({"seconds": seconds}) + "\n")
    history = json.loads((out / "history.json").read_text()) if (out / "history.json").exists() else []
    guard = json.loads((out / "guard.json").read_text()) if (out / "guard.json").exists() else []
    done = history[-1]["step"] if history else iterations
    return {"final": out / "final", "iterations": done, "videos": done * per_iteration, "seconds": seconds,
            "history": history, "guard": guard}  # fmt: skip


def held_out(spec: str, seeds: int, limit: int | None, size: list[int] | None = None) -> dict[str, Any]:
    """Verifier success and graded score of `spec` on the held-out prompts, with 95% intervals."""
    from vidpost.evaluation.shapes import evaluate_model
    from vidpost.evaluation.stats import stats
    from vidpost.shapes.splits import heldout_prompts

    items = heldout_prompts()[:limit] if limit else heldout_prompts()
    frames, height, width = size or (None, None, None)
    r = evaluate_model(spec, items, seeds=seeds, num_frames=frames, height=height, width=width)
    r.pop("videos", None)
    success = stats([float(rec["success"]) for rec in r["records"]])
    graded = stats([rec["score"] for rec in r["records"]])
    return {"n": r["n"], "success": success["mean"], "success_ci": success["wilson95"], "graded": graded["mean"],
            "graded_ci": graded["ci95"], "records": r["records"]}  # fmt: skip


def cached_held_out(path: Path, spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """`held_out` of `spec`, kept in `path` and reused while the model and the evaluation settings are the same (so
    each run is evaluated once, when it finishes, and the table is assembled from every finished run)."""
    key = {"spec": spec, "seeds": args.seeds, "limit": args.limit, "size": args.size}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["result"]
    result = held_out(spec, args.seeds, args.limit, args.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"key": key, "result": result}))
    return result


def table(rows: list[dict[str, Any]], videos: int) -> str:
    base = rows[0]
    lines = [
        f"Budget: {videos} training videos per algorithm; held-out: {base['n']} clips (64 prompts × seeds).",
        "",
        "| algorithm | held-out success (95% CI) | Δ success | graded (95% CI) | Δ graded | guard start → end "
        "| videos | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["success_ci"]
        glo, ghi = r["graded_ci"] or (float("nan"), float("nan"))  # one clip: no interval
        ds = "—" if r is base else f"{100 * (r['success'] - base['success']):+.1f} pts"
        dg = "—" if r is base else f"{r['graded'] - base['graded']:+.3f}"
        g = r.get("guard") or []
        guard = f"{g[0]['gold']:.3f} → {g[-1]['gold']:.3f}" if len(g) > 1 else "—"
        wall = f"{r['seconds'] / 60:.1f} min" if "seconds" in r else "—"
        lines.append(
            f"| {r['name']} | {100 * r['success']:.1f}% ({100 * lo:.1f}–{100 * hi:.1f}) | {ds} | {r['graded']:.3f} "
            f"({glo:.3f}–{ghi:.3f}) | {dg} | {guard} | {r.get('videos', '—')} | {wall} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in rows[1:]:
        h = r["history"]
        if h:
            x, y = np.array([e["step"] for e in h]), np.array([e["reward"] for e in h])
            k = max(1, len(y) // 10)
            axes[0].plot(x[k - 1 :], np.convolve(y, np.ones(k) / k, mode="valid"), label=r["name"])
        g = r["guard"]
        if g:
            axes[1].plot([e["step"] for e in g], [e["gold"] for e in g], marker="o", label=r["name"])
    axes[0].set(xlabel="iteration", ylabel="training reward (running mean)", title="reward")
    axes[1].set(xlabel="iteration", ylabel="held-out temporal consistency", title="guard")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost rl compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithms", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--model", default="shapes", help="the model every run starts from (default: shapes)")
    p.add_argument("--videos", type=int, default=1536, help="training videos per algorithm (default 1536)")
    p.add_argument("--seeds", type=int, default=2, help="held-out seeds per prompt (default 2: 128 clips)")
    p.add_argument("--limit", type=int, help="only the first N held-out prompts")
    p.add_argument("--size", type=int, nargs=3, metavar=("FRAMES", "HEIGHT", "WIDTH"), help="held-out clip size")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "shapes-rl")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "shapes-rl")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    args = p.parse_args(argv)
    if args.videos <= 0 or args.seeds <= 0:
        p.error("--videos and --seeds must be positive")
    try:
        start = cached_held_out(args.work / f"start-{Path(args.model).name}.json", args.model, args)
        rows = [{"name": f"start: `{args.model}`", **start}]
        for name in args.algorithms:
            run = run_variant(name, args.work, args.videos, [f"model.path={args.model}", *args.overrides])
            print(f"{name}: {run['iterations']} iterations, {run['seconds'] / 60:.1f} min", file=sys.stderr)
            spec = f"{args.model}+{run['final']}"
            rows.append({"name": name, **run, **cached_held_out(args.work / name / "heldout.json", spec, args)})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(rows, args.videos)
    write_text(args.out / "results.md", text + "\n")
    keep = ("name", "n", "success", "success_ci", "graded", "graded_ci", "iterations", "videos", "seconds", "guard")
    write_text(args.out / "results.json", json.dumps([{k: r[k] for k in keep if k in r} for r in rows], indent=1))
    plot(rows, args.out / "curves.png")
    print(text)
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
