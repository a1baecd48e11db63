"""`vidpost eval`: score videos with reward models → per-video CSV/JSON, summary statistics, plots and one
self-contained HTML report; `--compare` sets the run against a previous one.

    vidpost eval --prompts prompts.txt --videos outputs/batch/ --rewards temporal,motion --out results/eval-a
    vidpost eval --prompts shapes-heldout --model shapes --rewards verifier,temporal,motion --out results/sft \\
        --compare results/base
    vidpost eval --out results/sft --compare results/base     # re-summarise / re-compare an existing run

Prompts (`--prompts`): a `.txt` file (one prompt per line; blank lines and `#` comments skipped), a `.jsonl` or
`.json` list of objects `{id?, prompt | caption, seed?}` (or of plain strings), or `shapes-heldout` — the Shapes
world's held-out split with its canonical captions as prompts (what the `verifier` reward parses), its ids and
render seeds. Ids default to the zero-padded index (`000`, `001`, ...) and name the video files.

Videos. `--videos DIR` takes `<DIR>/<id>.mp4` (or `.gif`, `.webm`, `.mkv`, `.mov`) for each prompt; with several
videos per prompt (`--seeds N`, or found automatically) `<id>_s<k>.<ext>`. `--model PATH_OR_PRESET [--lora DIR]`
samples them with vidpost's sampler instead and writes `<out>/videos/<id>.mp4`; video k of prompt i gets seed
base + k·100003, base being the prompt's `seed` from the file or `--seed` + i (so a video does not depend on
its batch). Scores are always of the decoded files, so re-scoring an output folder with
`--videos <out>/videos --prompts <out>/prompts.jsonl` reproduces them. A missing, unreadable or corrupt video, or
a reward that raises on one video, is recorded as a failure (status + message) and listed in the report; it
never stops the run.

Rewards (`--rewards a,b,c`, `--reward-config FILE`): registry names of `vidpost.rewards` (`verifier`,
`verifier_binary`, `temporal`, `motion`, and with a weights `path`: `clip`, `hps`, `pickscore`, `aesthetic`,
`videoalign`, ...). The config (YAML or JSON) maps a name to its weight or to `{weight, type, path, ...}` options,
at top level or under `rewards:`; without `--rewards` every reward it names is used. Each reward is reported and
compared on its own (rewards of different scales are never summed); a weighted `total` is added only when the
config gives weights, and is labelled "weighted total".

Outputs in `--out`: `scores.csv` / `scores.json` (per video: id, prompt, seed, status, error, each reward's score
and its components, total), `summary.json` / `summary.md`, `plots/*.png`, `thumbs/<id>.gif`, `prompts.jsonl`,
`report.html` (summary table, plots, a grid per prompt with an animated GIF and the scores of each video, the
failures; images embedded as data URIs, so the file works on its own) and with `--compare` `compare.json` /
`compare.md`.

Statistics. Per reward over the videos it scored: n, mean, sample std (ddof 1), median, min, max and a 95%
t-interval for the mean, mean ± t(0.975, n − 1)·s/√n; a metric whose values are all 0 or 1 also gets a 95%
Wilson score interval for its rate. `--compare` joins the two runs on video id; per reward over the pairs that
both scored: the mean paired difference (this − other) with its 95% t-interval, and the win rate, the fraction
of pairs where this run scores higher, ties counting one half (higher is taken to be better for every reward).
The comparison's headline ranks the runs by the rewards in the order given, the first (e.g. `verifier` in
`--rewards verifier,temporal,motion`) being the primary: the first reward whose paired 95% CI excludes 0 decides.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vidpost.config import ArgumentParser
from vidpost.evaluation.generate import generate_videos
from vidpost.evaluation.gifs import make_gif
from vidpost.evaluation.html import _labels, write_report
from vidpost.evaluation.prompts import SHAPES_HELDOUT, discover_videos, load_prompts, make_records
from vidpost.evaluation.report import (
    compare_markdown,
    dump_json,
    load_run,
    make_plots,
    summary_markdown,
    write_scores,
)
from vidpost.evaluation.score import load_reward_spec, score_videos, spec_is_weighted
from vidpost.evaluation.settings import user_settings
from vidpost.evaluation.stats import compare_runs, reward_names, stats, summarise, t_quantile, wilson
from vidpost.models.base import DTYPES
from vidpost.outputs import write_text
from vidpost.seeding import prompt_seed

__all__ = [  # the evaluation core's functions, re-exported for the callers of this command's module
    "SHAPES_HELDOUT",
    "compare_runs",
    "generate_videos",
    "load_prompts",
    "load_reward_spec",
    "load_run",
    "main",
    "make_gif",
    "make_plots",
    "make_records",
    "score_videos",
    "stats",
    "summarise",
    "t_quantile",
    "wilson",
    "write_report",
    "write_scores",
]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="vidpost eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
    )
    p.add_argument("--prompts", help=f"prompts file (.txt, .jsonl, .json) or '{SHAPES_HELDOUT}'")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--videos", type=Path, help="folder of videos named <id>.mp4 to score")
    src.add_argument("--model", help="model folder or preset to generate the videos with")
    p.add_argument("--lora", help="LoRA folder applied to --model")
    p.add_argument("--rewards", help="comma-separated reward names, e.g. verifier,temporal,motion")
    p.add_argument("--reward-config", help="YAML/JSON: reward name → weight or {weight, path, ...}")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--compare", type=Path, help="a previous eval output folder to compare with")
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument("--title", help="report title")
    g = p.add_argument_group("generation (--model)")
    g.add_argument("--steps", type=int, help="denoising steps (model default when omitted)")
    g.add_argument("--guidance", type=float, help="guidance scale (model default when omitted)")
    g.add_argument("--shift", type=float, help="flow-matching shift (model default when omitted)")
    g.add_argument("--frames", "--num-frames", dest="num_frames", type=int, help="frames per video")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--fps", type=float, help="frame rate of the written mp4s")
    g.add_argument("--seed", type=int, default=0, help="base seed: prompt i without a seed of its own gets seed+i")
    g.add_argument("--seeds", type=int, help="videos per prompt (default 1; with --videos found from the files)")
    g.add_argument("--negative-prompt")
    g.add_argument("--batch-size", type=int, default=4, help="prompts sampled together")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    s = p.add_argument_group("scoring")
    s.add_argument("--score-batch-size", type=int, default=8, help="videos scored together")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--gif-size", type=int, default=128, help="longer side of the report's GIFs, pixels")
    s.add_argument("--gif-frames", type=int, default=16, help="frames in the report's GIFs")
    s.add_argument("--no-progress", action="store_true")
    return p


def _finish(
    args: argparse.Namespace,
    out: Path,
    records: list[dict],
    weights: dict[str, float],
    run_info: dict,
    weighted: bool = False,
) -> dict[str, Any]:
    """Write scores, summary, comparison, plots and the report for scored records."""
    summary = summarise(records, weights, weighted)
    summary["run"] = run_info
    if args.title:
        summary["title"] = args.title
    comparison, other = None, None
    if args.compare is not None:
        other_run = load_run(args.compare)
        other = other_run["records"]
        same_weights = weighted and other_run["weighted"] and dict(other_run["weights"]) == dict(weights)
        names = [n for n in reward_names(records, weights) if n in reward_names(other, other_run["weights"])]
        comparison = compare_runs(records, other, names, include_total=same_weights)
        comparison["other_dir"] = str(args.compare.resolve())
        comparison["this_dir"] = str(out.resolve())
        dump_json(out / "compare.json", comparison)
        write_text(out / "compare.md", compare_markdown(comparison) + "\n")
    else:
        for f in ("compare.json", "compare.md"):
            (out / f).unlink(missing_ok=True)
    dump_json(out / "summary.json", summary)
    write_text(out / "summary.md", summary_markdown(summary, comparison, str(args.compare) if args.compare else ""))
    make_plots(out, records, reward_names(records, weights), other=other, labels=_labels(out, args.compare))
    report = write_report(out, title=args.title, gif_size=args.gif_size, gif_frames=args.gif_frames)
    print(summary_markdown(summary, comparison, str(args.compare) if args.compare else ""))
    print(f"report: {report}", file=sys.stderr)
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    progress = not args.no_progress
    if args.videos is None and args.model is None:  # re-summarise / re-compare an existing run
        if not (out / "scores.json").is_file():
            raise ValueError("give --videos DIR or --model PATH (or --out an existing eval folder to re-report)")
        prev = load_run(out)
        info = prev["summary"].get("run", {}) | {"re-reported": _dt.datetime.now().isoformat(timespec="seconds")}
        return _finish(args, out, prev["records"], prev["weights"], info, prev["weighted"])

    spec = load_reward_spec(args.rewards, args.reward_config)
    weighted = spec_is_weighted(spec)
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.videos is not None and not args.videos.is_dir():
        raise ValueError(f"--videos {args.videos} is not a folder")
    if args.prompts:
        items = load_prompts(args.prompts, args.limit)
    elif args.videos is not None:
        items = discover_videos(args.videos)[: args.limit] if args.limit else discover_videos(args.videos)
    else:
        raise ValueError("--model needs --prompts")

    from vidpost.rewards.base import build_rewards

    try:  # before generating: a bad reward path or a missing optional dependency fails fast
        rewards = build_rewards(spec, device=args.device)
    except ImportError as e:
        raise ValueError(f"cannot build the rewards {list(spec)}: {e}") from e
    if not args.prompts and any(getattr(r, "uses_prompts", True) for r in rewards.rewards.values()):
        print("warning: no --prompts: rewards that read the prompt score against an empty prompt", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    run_info: dict[str, Any] = {
        "prompts": args.prompts or f"(files in {args.videos})",
        "rewards": ", ".join(f"{n} ×{w:g}" for n, w in rewards.weights.items()) if weighted else ", ".join(spec),
        "reward_config": args.reward_config,
        "device": args.device,
        "command": "vidpost eval " + " ".join(getattr(args, "argv", [])),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    if args.videos is not None:
        records = make_records(items, seeds=args.seeds, base_seed=None, videos_dir=args.videos)
        run_info["videos"] = str(args.videos.resolve())
        seeds_out = [it["seed"] for it in items]
    else:
        records = make_records(items, seeds=args.seeds or 1, base_seed=args.seed)
        seeds_out = [prompt_seed(it["seed"], args.seed, i) for i, it in enumerate(items)]
        gen = generate_videos(
            args.model,
            records,
            out / "videos",
            lora=args.lora,
            **user_settings(args),
            batch_size=args.batch_size,
            device=args.device,
            dtype=DTYPES[args.dtype] if args.dtype else None,
            progress=progress,
        )
        dump_json(out / "generation.json", gen)
        run_info |= {k: gen[k] for k in ("model", "lora", "num_frames", "height", "width", "num_inference_steps")}
        run_info |= {"guidance_scale": gen["guidance_scale"], "shift": gen["shift"], "base_seed": args.seed}
        run_info["seconds_per_video (generation)"] = gen["seconds_per_video"]
    with open(out / "prompts.jsonl", "w") as f:  # re-usable as --prompts (ids, prompts, base seeds)
        for it, seed in zip(items, seeds_out):
            f.write(json.dumps({"id": it["id"], "prompt": it["prompt"], "seed": seed}, ensure_ascii=False) + "\n")
    thumbs = out / "thumbs"
    for stale in thumbs.glob("*.gif"):  # from an earlier run into the same folder
        stale.unlink()
    t0 = time.time()
    score_videos(
        records,
        rewards,
        weighted=weighted,
        batch_size=args.score_batch_size,
        thumbs_dir=thumbs,
        gif_size=args.gif_size,
        gif_frames=args.gif_frames,
        progress=progress,
    )
    run_info["seconds_per_video (scoring)"] = round((time.time() - t0) / max(1, len(records)), 3)
    write_scores(out, records, rewards.weights, weighted)
    return _finish(args, out, load_run(out)["records"], rewards.weights, run_info, weighted)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        run(args)
    except (ValueError, KeyError, FileNotFoundError) as e:  # user mistakes: bad paths, unknown reward, sizes
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
