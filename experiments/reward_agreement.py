"""Does a differentiable Shapes reward rank a model's own clips as the verifier does?

    python experiments/reward_agreement.py [--model shapes] [--reward verifier_soft] [--seeds 2] [--json]

Reward backprop (`vidpost rl` algorithm draft) trains on `verifier_soft`, a soft reading of the verifier; it is
only a proxy for the verifier if it orders *generated* clips — blurred, split, fading objects, not just rendered
ground truth and its mutations — the way the verifier's graded score does. This samples the held-out prompts ×
seeds with the model (its generation defaults), scores every clip with both, and prints the Spearman rank
correlation of the totals and of each attribute both read (ranks averaged over ties), with the number of clips.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from vidpost.config import ArgumentParser


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n−1, tied values sharing their mean rank."""
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    _, inverse = np.unique(x, return_inverse=True)
    return (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the ranks, tied values sharing their mean rank."""
    ra, rb = rankdata(np.asarray(a, float)), rankdata(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.no_grad()
def agreement(model: str, reward_name: str, seeds: int, limit: int | None = None) -> dict[str, float]:
    """{"n", "score", <attribute>...}: Spearman's ρ between the verifier and `reward_name` on the model's clips."""
    from vidpost.evaluation.settings import resolve_settings
    from vidpost.evaluation.shapes import parse_model, sample_and_verify
    from vidpost.models import load, resolve_model_path
    from vidpost.rewards.base import build_reward
    from vidpost.shapes.splits import heldout_prompts

    items = heldout_prompts()[:limit] if limit else heldout_prompts()
    base, lora = parse_model(model)
    adapter = load(base, lora=lora)
    settings = resolve_settings(resolve_model_path(base), adapter)
    reward = build_reward(reward_name)
    hard: list[dict] = []
    soft: list[dict] = []
    texts = [it["caption"] for it in items]
    for _, idx, _, videos, rows in sample_and_verify(adapter, settings, items, texts, seeds=seeds):
        out = reward(videos, [texts[i] for i in idx])
        hard += rows
        soft += [{"score": float(out.score[j]), **{k: float(v[j]) for k, v in out.components.items()}}
                 for j in range(len(idx))]  # fmt: skip
    result = {"n": float(len(hard)), "score": spearman([h["score"] for h in hard], [s["score"] for s in soft])}
    for attr in soft[0]:
        if attr != "score" and attr in hard[0] and not isinstance(hard[0][attr], bool):
            result[attr] = spearman([float(h[attr]) for h in hard], [s[attr] for s in soft])
    return result


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python experiments/reward_agreement.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes", help="model folder or preset, or MODEL+LORA (default shapes)")
    p.add_argument("--reward", default="verifier_soft")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--limit", type=int, help="only the first N held-out prompts")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.seeds <= 0:
        p.error("--seeds must be positive")
    try:
        result = agreement(args.model, args.reward, args.seeds, args.limit)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.reward} vs the verifier on {int(result['n'])} clips of {args.model} (Spearman's rho)")
    for k, v in result.items():
        if k != "n":
            print(f"  {k:<12} {v:+.3f}")
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
