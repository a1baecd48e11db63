"""`vidpost compare`: models, students, quantisation recipes and prompt rewriters side by side on the Shapes world's
held-out scenes, one table (`vidpost.evaluation.compare`: the row syntax, the columns and the paired statistics).

    vidpost compare shapes-base shapes shapes-rl --columns attributes
    vidpost compare shapes-rl shapes-fast@steps=4 shapes-fast@steps=2 --columns temporal speed
    vidpost compare shapes shapes@quant=configs/quant/w8a8-int8.yaml runs/qat-rot/final --columns temporal quant
    vidpost compare shapes@prompts=prompt_user shapes@enhance=assets/shapes/rewriter shapes

Written to `--out`: `table.md`, `results.json` (every clip's scores per row) and `grid.png` (the first scenes, a row
of the grid per row of the table). `vidpost shapes eval`, `distill eval` and `quantize eval` are this command with
their rows and columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vidpost.config import ArgumentParser, positive_int
from vidpost.evaluation.compare import COLUMN_GROUPS, RowSpec, evaluate, load_plain, markdown, parse_row
from vidpost.outputs import write_text
from vidpost.training.runner import ExitCode


def load_row(row: RowSpec) -> tuple[Any, Path, Any]:
    """A row's model; a `quant=` recipe is applied and calibrated here, as `vidpost quantize` does."""
    if not row.quant:
        return load_plain(row)
    from vidpost.evaluation.shapes import parse_model
    from vidpost.models import resolve_model_path
    from vidpost.pipelines.quantize import quantize_model

    adapter, report = quantize_model(row.model, row.quant)
    return adapter, resolve_model_path(parse_model(row.model)[0]), report


def run_compare(
    rows: list[RowSpec],
    *,
    columns: tuple[str, ...],
    seeds: int,
    limit: int | None,
    batch_size: int,
    out: Path,
    about: str = "",
) -> tuple[list[dict[str, Any]], str]:
    """Evaluate `rows` on the first `limit` held-out scenes, write table.md, results.json and grid.png to `out` and
    print the table → (rows, table)."""
    from vidpost.media.video_io import contact_sheet
    from vidpost.shapes.splits import heldout_prompts

    items = heldout_prompts()[:limit] if limit else heldout_prompts()
    results = evaluate(rows, items, seeds=seeds, batch_size=batch_size, load_row=load_row)
    table = (about + "\n\n" if about else "") + markdown(results, ("quality", *columns), len(items), seeds)
    write_text(out / "table.md", table + "\n")
    videos, labels = [], []
    for row in results:
        for j, v in enumerate(row.pop("videos")):
            videos.append(v)
            labels.append(f"{row['label'][:28]} · {items[j]['caption'][:32]}")
    contact_sheet(videos, out / "grid.png", labels=labels)
    write_text(out / "results.json", json.dumps({"rows": results}, indent=1) + "\n")
    print(table)
    return results, table


def add_common_arguments(p: ArgumentParser, out: str) -> None:
    p.add_argument("--seeds", type=positive_int, default=2, help="videos per scene (the same noises in every row)")
    p.add_argument("--limit", type=positive_int, help="the first N held-out scenes (default: all 64)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path(out))


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost compare", description=__doc__.split("\n\n")[0])
    p.add_argument("rows", nargs="+", help="MODEL[+LORA][@key=value,...] (see `vidpost.evaluation.compare`)")
    p.add_argument("--columns", nargs="*", default=[], choices=[g for g in COLUMN_GROUPS if g != "quality"])
    add_common_arguments(p, "outputs/compare")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [parse_row(r) for r in args.rows]  # a bad row: a ValueError, one line and exit 2 (`vidpost.errors`)
    run_compare(
        rows, columns=tuple(args.columns), seeds=args.seeds, limit=args.limit, batch_size=args.batch_size,
        out=args.out,
    )  # fmt: skip
    return ExitCode.OK


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
