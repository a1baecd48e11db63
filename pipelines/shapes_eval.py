"""`vidpost shapes eval`: verifier success of one or more models on the Shapes world's held-out prompts.

    vidpost shapes eval --models shapes-base shapes [--seeds 2] [--prompt-key caption] [--out results/shapes-eval]

For every model (a preset, a folder, or `folder+lora_folder`), each held-out prompt is sampled with `--seeds`
seeds (video k of prompt i: the prompt's own seed + k·100003, `vidpost.seeding`, the same for every
model) at the model's default size and steps (its `vidpost.json`, else the Wan 480p recipe), and
the Shapes verifier scores the video against the prompt's scene spec. Printed and written (markdown + JSON): the
success rate with a 95% Wilson interval and the mean per-attribute scores; a contact sheet per model shows the
first prompts. `--prompt-key prompt_user` evaluates the free-form user-style prompts of the same scenes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vidpost.config import ArgumentParser
from vidpost.evaluation.shapes import ATTRIBUTES, evaluate_model, markdown_table, verify_rows
from vidpost.evaluation.stats import wilson
from vidpost.outputs import write_text

__all__ = ["ATTRIBUTES", "evaluate_model", "main", "markdown_table", "verify_rows", "wilson"]


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost shapes eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["shapes-base", "shapes"], help="presets/folders (base+lora ok)")
    p.add_argument("--prompt-key", default="caption", choices=["caption", "prompt_user"])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int)
    p.add_argument("--frames", "--num-frames", dest="num_frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--shift", type=float)
    p.add_argument("--keyframe", help="a latent frame index generated first, then the clip around it; or 'off'")
    p.add_argument("--limit", type=int, help="evaluate only the first N held-out prompts")
    p.add_argument("--out", type=Path, default=Path("outputs/shapes-eval"))
    args = p.parse_args(argv)
    from vidpost.media.video_io import contact_sheet
    from vidpost.shapes.splits import heldout_prompts

    items = heldout_prompts()[: args.limit] if args.limit else heldout_prompts()
    results = []
    try:
        for spec in args.models:
            r = evaluate_model(
                spec,
                items,
                prompt_key=args.prompt_key,
                seeds=args.seeds,
                steps=args.steps,
                guidance_scale=args.guidance,
                shift=args.shift,
                num_frames=args.num_frames,
                height=args.height,
                width=args.width,
                keyframe=args.keyframe,
            )
            results.append(r)
            print(f"{spec}: success {100 * r['success']:.1f}% (n={r['n']})", file=sys.stderr)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for r in results:
        name = r["model"].replace("/", "_").replace("+", "__")
        labels = [f"{rec['prompt']} [{'ok' if rec['success'] else 'x'}]" for rec in r["records"][:8]]
        contact_sheet(r.pop("videos")[:8], args.out / f"{name}.png", labels=labels)
    table = markdown_table(results)
    write_text(args.out / "results.md", table + "\n")
    write_text(args.out / "results.json", json.dumps(results, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
