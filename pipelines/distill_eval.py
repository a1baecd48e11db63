"""`vidpost distill eval`: a few-step student beside its teacher on the Shapes held-out prompts, one run, side by side.

    vidpost distill eval --teacher shapes-rl --student shapes-fast --student-steps 4 2 1 [--seeds 2] \
        [--out results/shapes-fast]

Rows: the teacher at its own defaults (20 steps, CFG), then the student at each `--student-steps` (its own guidance
and schedule from its `vidpost.json`). Every row samples the same prompts from the same noises (the evaluation
core's seeding), so the deltas are paired. Columns: verifier success (95% Wilson interval), graded score (95%
t-interval), the paired graded delta to the teacher (95% t-interval), temporal consistency, transformer evaluations
per clip (steps × 2 with CFG), and the sampler's wall time per clip without and with the VAE decode (the verifier
is not timed), measured in this process one row after the other, with their ratios to the teacher's. Written: `table.md`,
`results.json` (per-clip records) and `grid.png` (the first prompts, one row per model and step count).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from vidpost.config import ArgumentParser
from vidpost.outputs import write_text
from vidpost.training.runner import ExitCode


def evaluate_rows(
    teacher: str,
    student: str,
    student_steps: list[int],
    items: list[dict[str, Any]],
    seeds: int,
    batch_size: int,
    teacher_steps: int | None = None,
) -> list[dict[str, Any]]:
    """Sample and score each row (`vidpost.evaluation.shapes.score_row`); → one dict per row."""
    from vidpost.evaluation.settings import resolve_settings
    from vidpost.evaluation.shapes import parse_model, score_row
    from vidpost.models import load, resolve_model_path
    from vidpost.rewards.base import build_reward

    temporal = build_reward("temporal")
    rows = []
    plan = [(teacher, teacher_steps)] + [(student, s) for s in student_steps]
    loaded: dict[str, Any] = {}
    for spec, steps in plan:
        if spec not in loaded:
            base, lora = parse_model(spec)
            loaded[spec] = (load(base, lora=lora), resolve_model_path(base))
        adapter, path = loaded[spec]
        settings = resolve_settings(path, adapter, steps=steps)
        row = {
            "model": spec,
            "steps": settings.steps,
            "guidance": settings.guidance,
            "schedule": adapter.schedule,
            "evals_per_clip": settings.steps * (2 if adapter.uses_cfg(settings.guidance) else 1),
        }
        row |= score_row(adapter, settings, items, seeds=seeds, batch_size=batch_size, temporal=temporal)
        row["settings"] = settings.record()
        rows.append(row)
        print(f"{spec} · {settings.steps} steps: {_line(row, rows[0])}", file=sys.stderr)
    return rows


def _line(row: dict[str, Any], ref: dict[str, Any]) -> str:
    from vidpost.evaluation.stats import paired_cells

    n = len(row["success"])
    c = paired_cells(row, ref)
    per_clip = row["seconds"] / n
    speed = (ref["seconds"] / len(ref["success"])) / per_clip
    denoise = (row["seconds"] - row["decode_seconds"]) / n
    denoise_speed = ((ref["seconds"] - ref["decode_seconds"]) / len(ref["success"])) / denoise
    return (
        f"{c['success']} | {c['graded']} | {c['delta']} | {c['delta_success']} | {sum(row['temporal']) / n:.4f} | "
        f"{row['evals_per_clip']} | {denoise:.3f} | {denoise_speed:.1f}× | {per_clip:.3f} | {speed:.1f}×"
    )


def markdown(rows: list[dict[str, Any]], n_prompts: int, seeds: int) -> str:
    ref = rows[0]
    lines = [
        f"{len(ref['success'])} held-out clips ({n_prompts} prompts × {seeds} seeds, the same noises in every row); "
        "wall time per clip: the sampler (text encoding + denoising) and the VAE decode, rows run one after the other "
        "in one process.",
        "",
        "| model | steps | guidance | success (95% CI) | graded (95% CI) | Δ graded vs teacher (95% CI) | Δ success "
        "(pts) | temporal | transformer evals / clip | s / clip, denoising | speed-up | s / clip, with VAE decode "
        "| speed-up |",
        "|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['model']} | {row['steps']} | {row['guidance']:g} | {_line(row, ref)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost distill eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="shapes-rl", help="the teacher (preset, folder or folder+lora)")
    p.add_argument("--teacher-steps", type=int, help="the teacher's steps (default: its own)")
    p.add_argument("--student", required=True, help="the student folder or preset")
    p.add_argument("--student-steps", type=int, nargs="+", default=[4, 2, 1])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--limit", type=int, help="the first N held-out prompts (default: all 64)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("outputs/distill-eval"))
    args = p.parse_args(argv)
    from vidpost.media.video_io import contact_sheet
    from vidpost.shapes.splits import heldout_prompts

    if args.threads:
        torch.set_num_threads(args.threads)
    items = heldout_prompts()
    items = items[: args.limit] if args.limit else items
    try:
        rows = evaluate_rows(
            args.teacher, args.student, args.student_steps, items, args.seeds, args.batch_size, args.teacher_steps
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, len(items), args.seeds)
    write_text(args.out / "table.md", table + "\n")
    videos, labels = [], []
    for row in rows:
        for j, v in enumerate(row.pop("videos")):
            videos.append(v)
            labels.append(f"{row['steps']} steps · {items[j]['caption'][:40]}")
    contact_sheet(videos, args.out / "grid.png", labels=labels)
    write_text(args.out / "results.json", json.dumps({"teacher": args.teacher, "rows": rows}, indent=1) + "\n")
    print(table)
    return ExitCode.OK


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
