"""GRPO throughput: videos per second of rollout + reward + update, and where the time goes.

    python benchmarks/bench_grpo.py [--model shapes] [--iterations 4] [--group 8] [--prompts 4] [--steps 12]

Runs `vidpost.pipelines.rl.train` for a few iterations of the Shapes GRPO recipe (configs/shapes/grpo.yaml: LoRA,
verifier reward, SDE sampling with log-probs) with the guard and checkpoints off, and reports from the run's own
per-iteration timings (the first iteration discarded as warm-up) the median seconds of sampling (SDE rollout +
VAE decode), reward and update (log-prob recomputation + backward + optimizer step), their shares, and videos/s
(videos per iteration / median iteration time). `--model` takes any model folder (e.g. a Wan2.1-1.3B with random
weights, with the size flags). The trainer runs where accelerate puts it: the GPU when one is visible
(`CUDA_VISIBLE_DEVICES=` for the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="shapes")
    p.add_argument("--config", default="configs/shapes/grpo.yaml")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    args = p.parse_args()
    from vidpost.config import load_config
    from vidpost.pipelines.rl import RLConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"output_dir={tmp}",
            f"model.path={args.model}",
            f"train.max_steps={args.iterations}",
            f"rollout.group_size={args.group}",
            f"rollout.prompts_per_step={args.prompts}",
            f"rollout.steps={args.steps}",
            "guard.every=0",
            "checkpoint.every=0",
        ]
        for key, value in (("num_frames", args.frames), ("height", args.height), ("width", args.width)):
            if value is not None:
                overrides.append(f"rollout.{key}={value}")
        cfg = load_config(RLConfig, args.config, overrides)
        t0 = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - t0
    hist = result.history[1:] or result.history
    phases = {k: statistics.median(h[f"time_{k}"] for h in hist) for k in ("sampling", "reward", "update")}
    total = sum(phases.values())
    videos = args.group * args.prompts
    print(
        f"model {args.model}, {videos} videos / iteration ({args.prompts} prompts × group {args.group}), "
        f"{args.steps} SDE steps, {len(hist)} timed iterations (wall {wall:.0f} s incl. load and warm-up)\n"
    )
    print("| phase | median s / iteration | share |")
    print("|---|---|---|")
    for k, v in phases.items():
        print(f"| {k} | {v:.2f} | {100 * v / total:.0f}% |")
    print(f"| total | {total:.2f} | 100% |")
    print(f"\nthroughput: {videos / total:.2f} videos/s (rollout + reward + update)")


if __name__ == "__main__":
    main()
