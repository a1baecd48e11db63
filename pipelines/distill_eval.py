"""`vidpost distill eval`: a few-step student beside its teacher on the Shapes held-out prompts, one run, side by side.

    vidpost distill eval --teacher shapes-rl --student shapes-fast --student-steps 4 2 1 [--seeds 2] \
        [--out results/shapes-fast]

Rows: the teacher at its own defaults (20 steps, CFG), then the student at each `--student-steps` (its own guidance
and schedule from its `vidpost.json`). Every row samples the same prompts from the same noises (the evaluation
core's seeding), so the deltas are paired. Columns: verifier success (95% Wilson interval), graded score (95%
t-interval), the paired graded delta to the teacher (95% t-interval), temporal consistency, transformer evaluations
per clip (steps × 2 with CFG), and the sampler's wall time per clip without and with the VAE decode (the verifier
is not timed), measured in this process one row after the other, with their ratios to the teacher's. Written: `table.md`,
`results.json` (per-clip records) and `grid.png` (the first prompts, one row per model and step count). It is
`vidpost compare TEACHER STUDENT@steps=N ... --columns temporal speed`.
"""

from __future__ import annotations

import torch

from vidpost.config import ArgumentParser, positive_int
from vidpost.evaluation.compare import RowSpec
from vidpost.pipelines.compare import add_common_arguments, run_compare
from vidpost.training.runner import ExitCode


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost distill eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="shapes-rl", help="the teacher (preset, folder or folder+lora)")
    p.add_argument("--teacher-steps", type=positive_int, help="the teacher's steps (default: its own)")
    p.add_argument("--student", required=True, help="the student folder or preset")
    p.add_argument("--student-steps", type=positive_int, nargs="+", default=[4, 2, 1])
    add_common_arguments(p, "outputs/distill-eval")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [RowSpec(args.teacher, steps=args.teacher_steps)]
    rows += [RowSpec(args.student, steps=s) for s in args.student_steps]
    about = (
        "Wall time per clip: the sampler (text encoding + denoising) and the VAE decode, rows run one after the "
        "other in one process."
    )
    run_compare(
        rows, columns=("temporal", "speed"), seeds=args.seeds, limit=args.limit, batch_size=args.batch_size,
        out=args.out, about=about,
    )  # fmt: skip
    return ExitCode.OK


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
