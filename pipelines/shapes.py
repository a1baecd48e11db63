"""`vidpost shapes ...`: the command line of the Shapes world.

Subcommands:
- `export --out DIR [--split train|heldout] [--n N] [--frames 17] [--height 64] [--width 64] [--fps 8]
  [--seed 0] [--crf 10]`: write mp4 clips + manifest.jsonl (`export.export`; resumable).
- `verifier-stats [--n 300] [--degrade] [--frames 17] [--height 64] [--width 64] [--seed 0]`: render n random
  scenes, verify their clips (ground truth) and clips of a one-attribute mutation (`verifier_accuracy`), and print
  success / false-success rates, per-attribute accuracy, false success per mutation and time per clip; with
  `--degrade` a second column for the same clips degraded by `degrade.degrade`.
- `render --caption TEXT --out FILE.mp4 [--seed 0] [--frames] [--height] [--width] [--fps]`: one clip of a
  canonical caption.
- `write-heldout [--version v1]`: regenerate the committed held-out JSON from `splits.heldout_prompts`.
- `ceiling [--model shapes] [--mutations 3] [--limit N] [--json]`: the ruler's ceiling on the held-out clips —
  the verifier's success on the ground truth and on the model's VAE reconstructions of it, per attribute, and its
  false success on one-attribute mutations of both (`vidpost.evaluation.ceiling`).
- `headroom [--model shapes] [--seeds 8] [--limit N] [--json] [--out DIR]`: a model's best-of-k headroom on
  the held-out prompts and how many of its successful videos survive the mp4 → VAE round trip
  (`vidpost.evaluation.headroom`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vidpost.config import ArgumentParser

__all__ = ["main"]


def _at_least(low: int):
    """An argparse type: an integer ≥ `low`."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low} (got {value})")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="vidpost shapes", description="The Shapes world: data, verifier, splits.")
    sub = parser.add_subparsers(dest="command", required=True)

    def clip_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
        p.add_argument("--height", type=int, default=64, help="frame height (default 64)")
        p.add_argument("--width", type=int, default=64, help="frame width (default 64)")

    p = sub.add_parser("export", help="write a split as mp4 clips + manifest.jsonl")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", choices=("train", "heldout"), default="train")
    p.add_argument("--n", type=int, default=None, help="number of clips (required for train; heldout: all 64)")
    clip_args(p)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="training stream (train split only)")
    p.add_argument("--crf", type=int, default=10, help="H.264 constant quality (lower = better)")

    p = sub.add_parser("ceiling", help="the verifier on held-out ground truth and its VAE reconstructions")
    p.add_argument("--model", default="shapes", help="model folder or preset, or a VAE folder (default shapes)")
    p.add_argument("--mutations", type=int, default=3, help="one-attribute mutations per clip (default 3)")
    p.add_argument("--limit", type=int, help="only the first N held-out clips")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")

    p = sub.add_parser("headroom", help="best-of-k headroom of a model and the VAE round trip of its successes")
    p.add_argument("--model", default="shapes", help="model folder or preset, or MODEL+LORA (default shapes)")
    p.add_argument("--seeds", type=_at_least(2), default=8, help="samples per held-out prompt (default 8)")
    p.add_argument("--limit", type=_at_least(1), help="only the first N held-out prompts")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, help="keep the round-tripped mp4 files and headroom.json here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")

    p = sub.add_parser("verifier-stats", help="measure the verifier's success and false-success rates")
    p.add_argument("--n", type=int, default=300, help="number of scenes (default 300)")
    p.add_argument("--degrade", action="store_true", help="also measure on degraded clips")
    clip_args(p)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("render", help="render one clip of a canonical caption to mp4")
    p.add_argument("--caption", required=True)
    p.add_argument("--out", required=True, help="output .mp4 path")
    clip_args(p)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("write-heldout", help="regenerate the committed held-out prompt set JSON")
    p.add_argument("--version", default="v1")
    return parser


def _stats_table(results: list[dict[str, Any]]) -> str:
    from vidpost.shapes.verifier import ATTRIBUTES

    names = ["degraded" if r["degraded"] else "clean" for r in results]
    first = results[0]
    head = f"verifier on {first['n']} scenes × 2 clips (ground truth + one-attribute mutation)"
    rows = [head, f"{'':32s}" + "".join(f"{name:>10s}" for name in names)]

    def row(label: str, values: list[str]) -> None:
        rows.append(f"{label:32s}" + "".join(f"{v:>10s}" for v in values))

    row("ground-truth success", [f"{r['success_rate']:.3f}" for r in results])
    row("false success", [f"{r['false_success_rate']:.3f}" for r in results])
    rows.append("accuracy on ground truth")
    for a in ATTRIBUTES:
        row(f"  {a}", [f"{r['attribute_accuracy'][a]:.3f}" for r in results])
    rows.append("false success by mutation (count)")
    for kind in first["false_success_by_mutation"]:
        row(f"  {kind}", [_rate(r["false_success_by_mutation"].get(kind)) for r in results])
    row("ms per clip", [f"{r['ms_per_clip']:.1f}" for r in results])
    return "\n".join(rows)


def _rate(entry: tuple[float, int] | None) -> str:
    return "-" if entry is None else f"{entry[0]:.2f} ({entry[1]})"


def main(argv: list[str] | None = None) -> int:
    """Run the Shapes-world CLI; returns the process exit code (2 with a one-line error for bad input: a bad
    argument value, a model path that does not exist)."""
    args = _parser().parse_args(argv)
    from vidpost.models.base import ModelPathError

    try:
        return _run(args)
    except ModelPathError as e:
        import sys

        print(f"vidpost shapes {args.command}: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "export":
        from vidpost.shapes.export import export

        manifest = export(
            args.out,
            split=args.split,
            n=args.n,
            num_frames=args.frames,
            height=args.height,
            width=args.width,
            fps=args.fps,
            seed=args.seed,
            crf=args.crf,
        )
        print(manifest)
        return 0
    if args.command == "verifier-stats":
        from vidpost.shapes.verifier import verifier_accuracy

        kwargs = {"num_frames": args.frames, "height": args.height, "width": args.width, "seed": args.seed}
        results = [verifier_accuracy(args.n, **kwargs)]
        if args.degrade:
            results.append(verifier_accuracy(args.n, degrade=True, **kwargs))
        print(_stats_table(results))
        return 0
    if args.command == "render":
        from vidpost.shapes.captions import parse_caption
        from vidpost.shapes.export import write_clip
        from vidpost.shapes.world import render

        spec = parse_caption(args.caption)
        video = render(spec, num_frames=args.frames, height=args.height, width=args.width, seed=args.seed)
        write_clip(args.out, video, fps=args.fps)
        print(args.out)
        return 0
    if args.command == "ceiling":
        import json

        from vidpost.evaluation.ceiling import ceiling_table, shapes_ceiling

        result = shapes_ceiling(args.model, mutations=args.mutations, limit=args.limit)
        print(json.dumps(result, indent=1) if args.json else ceiling_table(result))
        return 0
    if args.command == "headroom":
        import json

        from vidpost.evaluation.headroom import headroom_table, shapes_headroom

        r = shapes_headroom(args.model, seeds=args.seeds, limit=args.limit, batch_size=args.batch_size, out=args.out)
        print(json.dumps(r, indent=1) if args.json else headroom_table(r))
        return 0
    if args.command == "write-heldout":
        from vidpost.shapes.splits import write_heldout_json

        print(write_heldout_json(args.version))
        return 0
    raise AssertionError(args.command)
