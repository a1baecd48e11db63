"""Best-of-N inference scaling: sample N videos per prompt, keep the one a reward scores highest.

    vidpost best-of-n --model shapes --prompt "a red circle moves to the right" -n 8 --reward verifier --out out/
    vidpost best-of-n --model PATH --prompts prompts.txt -n 16 --reward hps --reward-config rewards.yaml

Candidate k of prompt p uses seed `seed + p + k·100003` (`vidpost.seeding`, the rule of every
command), so a run is reproducible and the best candidate can be
regenerated alone. Writes `<out>/<index>_<slug>.mp4` (the winner), `candidates.png` (all N per prompt, the
winner marked) and `best_of_n.json` (every candidate's score and components, the chosen index).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vidpost.config import ArgumentParser
from vidpost.evaluation.generate import sample_batches
from vidpost.evaluation.prompts import slug
from vidpost.evaluation.score import load_reward_spec
from vidpost.evaluation.settings import GenerationSettings, resolve_settings, user_settings
from vidpost.models import ModelPathError, load, resolve_model_path
from vidpost.outputs import write_text
from vidpost.seeding import prompt_seed, video_seed


def best_of_n(
    adapter,
    prompts: list[str],
    reward,
    *,
    n: int,
    settings: GenerationSettings,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """For each prompt: {prompt, best, scores[N], components{name: [N]}, video (the winner [C, T, H, W])}."""
    results = []
    for p_idx, prompt in enumerate(tqdm(prompts, desc="best-of-n", disable=not progress)):
        seeds = [video_seed(prompt_seed(None, seed, p_idx), k) for k in range(n)]
        batch = torch.cat(
            [v.cpu() for _, v, _ in sample_batches(adapter, [prompt] * n, seeds, settings, batch_size=batch_size)]
        )
        out = reward(batch, [prompt] * n)
        best = int(torch.argmax(out.score))
        results.append(
            {
                "prompt": prompt,
                "best": best,
                "seeds": seeds,
                "scores": out.score.tolist(),
                "components": {k: v.tolist() for k, v in out.components.items()},
                "video": batch[best],
                "candidates": batch,
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost best-of-n", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes", help="model folder or preset")
    p.add_argument("--lora", help="a diffusers LoRA folder to apply")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    group.add_argument("--prompts", type=Path, help="a .txt file, one prompt per line")
    p.add_argument("-n", type=int, default=8, help="candidates per prompt")
    p.add_argument("--reward", default="verifier", help="comma-separated reward names (weights from --reward-config)")
    p.add_argument("--reward-config", type=Path, help="YAML/JSON reward spec (name → weight or options)")
    p.add_argument("--out", type=Path, default=Path("outputs/best_of_n"))
    p.add_argument("--frames", "--num-frames", dest="num_frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--shift", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="candidates sampled together")
    args = p.parse_args(argv)
    if args.n < 1:
        print("error: -n must be ≥ 1", file=sys.stderr)
        return 2
    try:
        from vidpost.rewards.base import build_rewards

        spec = load_reward_spec(args.reward, args.reward_config)
        reward = build_rewards(spec)
        model_dir = resolve_model_path(args.model)
        adapter = load(model_dir, lora=args.lora)
    except (ModelPathError, KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prompts = args.prompt or [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    try:
        settings = resolve_settings(model_dir, adapter, **user_settings(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = best_of_n(
        adapter, prompts, reward, n=args.n, settings=settings, seed=args.seed, batch_size=args.batch_size
    )
    from vidpost.media.video_io import contact_sheet, write_video

    args.out.mkdir(parents=True, exist_ok=True)
    sheet, labels = [], []
    for i, r in enumerate(results):
        write_video(args.out / f"{i:03d}_{slug(r['prompt'])}.mp4", r["video"], fps=settings.fps)
        for k, v in enumerate(r["candidates"]):
            sheet.append(v)
            labels.append(f"{'* ' if k == r['best'] else ''}{r['prompt'][:40]} [{r['scores'][k]:.3f}]")
    contact_sheet(sheet, args.out / "candidates.png", labels=labels)
    summary = [{k: v for k, v in r.items() if k not in ("video", "candidates")} for r in results]
    write_text(args.out / "best_of_n.json", json.dumps(summary, indent=1) + "\n")
    mean_best = sum(r["scores"][r["best"]] for r in results) / len(results)
    mean_all = sum(sum(r["scores"]) / len(r["scores"]) for r in results) / len(results)
    print(f"best-of-{args.n}: mean reward of the chosen {mean_best:.4f} vs {mean_all:.4f} for a random candidate")
    print(f"videos, candidates.png and best_of_n.json in {args.out}")
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
