"""Reward throughput (videos/s) of every reward, side by side in one run, and the reward server's overlap.

    python benchmarks/bench_rewards.py [--batch 8 --repeats 5 --rewards clip hps --threads 2 --out FILE]
    python benchmarks/bench_rewards.py --device cuda --config rewards.yaml --frames 81 --height 480 --width 832

Input: a batch of `--batch` Shapes clips (`vidpost.shapes.world.render` of `random_scene`s, float32
[B, 3, T, H, W] in [0, 1], default [B, 3, 17, 64, 64]) with their canonical captions as prompts. Each reward is
built with `vidpost.rewards.base.build_reward(name, **cfg)`, called once to warm up, then `--repeats` times;
reported: build seconds, median ms per batch, ms per video and videos/s.

Weights: by default the learned rewards (clip, hps, pickscore, aesthetic, videoalign) load CPU miniatures in the
real checkpoint formats, written to a temporary folder by `vidpost.rewards.testing` (random weights: the numbers
measure the reward pipelines — frame selection, preprocessing, tokenisation, batching — plus a very small model,
not the real models' cost). `--config rewards.yaml` (or .json) maps reward names to real configs, e.g.

    hps: {path: /weights/HPS_v2.1_compressed.pt}
    pickscore: {path: /weights/PickScore_v1, processor_path: /weights/CLIP-ViT-H-14-laion2B-s32B-b79K}
    aesthetic: {path: /weights/sac+logos+ava1-l14-linearMSE.pth, clip_path: /weights/clip-vit-large-patch14}
    clip: {path: /weights/clip-vit-large-patch14}
    videoalign: {path: /weights/VideoReward-vidpost, dtype: bfloat16}

(a `type` key lets one name another reward kind, as in `build_rewards`); with a config, the rewards run are its
names unless `--rewards` says otherwise, and a learned reward it does not name falls back to its miniature.

Reward server: for the selected weight-free rewards (verifier, temporal, motion) together, the same combination is
timed in-process and through `vidpost.rewards.server.RewardServer` (scoring only, and in a loop where each batch's
sampling is simulated by a sleep of `--sample-seconds`, default the in-process scoring time, so that at best the
server hides all of it). The sleep leaves the CPU idle: on a CPU-only machine real sampling would compete with the
reward workers for the same cores, so the overlapped figure is an upper bound there; on a GPU, where sampling keeps
the GPU busy and these rewards run on CPU cores, a sleep is a fair stand-in.

Output: a markdown block (command line, machine, torch threads, then the tables), printed and, with `--out`,
appended to that file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

ALL = ["verifier", "temporal", "motion", "clip", "hps", "pickscore", "aesthetic", "videoalign"]
WEIGHT_FREE = ("verifier", "verifier_binary", "temporal", "motion")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="videos per batch (B)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per reward, after one warm-up call")
    p.add_argument("--rewards", nargs="+", default=None, help=f"names (space or comma separated); default {ALL}")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--device", default="cpu", help="device the rewards run on (cpu, cuda, cuda:1, ...)")
    p.add_argument("--config", type=Path, default=None, help="YAML/JSON: reward name → config (real weights)")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--server-workers", type=int, default=1, help="RewardServer worker processes")
    p.add_argument("--sample-seconds", type=float, default=None, help="simulated sampling time per batch")
    p.add_argument("--no-server", action="store_true", help="skip the in-process vs RewardServer comparison")
    p.add_argument("--out", type=Path, default=None, help="append the markdown output to this file")
    args = p.parse_args(argv)
    if args.rewards is not None:
        args.rewards = [n for item in args.rewards for n in item.split(",") if n]
    return args


# -------------------------------------------------------------------------------------------------- inputs


def shapes_batch(b: int, frames: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """B rendered Shapes clips [B, 3, T, H, W] and their canonical captions."""
    from vidpost.shapes.captions import caption
    from vidpost.shapes.world import random_scene, render

    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(b)]
    videos = np.stack([render(s, num_frames=frames, height=height, width=width, seed=i) for i, s in enumerate(scenes)])
    return torch.from_numpy(videos), [caption(s) for s in scenes]


def load_config(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of reward name → config")
    return {name: dict(cfg or {}) for name, cfg in data.items()}


def miniature_configs(names: list[str], root: Path, words: list[str]) -> dict[str, dict[str, Any]]:
    """Configs pointing at miniature checkpoints built under `root`, for the learned rewards in `names`."""
    from vidpost.rewards import testing

    out: dict[str, dict[str, Any]] = {}
    need_hf = {"clip", "pickscore", "aesthetic"} & set(names)
    hf = testing.tiny_hf_clip(root / "hf-clip", max_positions=77, words=words) if need_hf else None
    if "clip" in names:
        out["clip"] = {"path": str(hf)}
    if "pickscore" in names:
        out["pickscore"] = {"path": str(hf)}
    if "aesthetic" in names:
        head = testing.tiny_aesthetic_head(root / "aesthetic" / testing.AESTHETIC_FILES["mlp"], 16, kind="mlp")
        out["aesthetic"] = {"path": str(head), "clip_path": str(hf)}
    if "hps" in names:
        oc = testing.tiny_open_clip(root / "open-clip", context_length=77)
        out["hps"] = {"path": str(oc["hps"]), "arch": oc["arch"]}
    if "videoalign" in names:
        out["videoalign"] = {"path": str(testing.tiny_videoalign(root / "videoalign", words=words))}
    return out


# -------------------------------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn, repeats: int, device: str) -> list[float]:
    """Seconds of each of `repeats` calls of `fn()`, after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def bench_reward(name: str, cfg: dict[str, Any], videos, prompts, args) -> dict[str, Any]:
    from vidpost.rewards.base import build_reward

    cfg = dict(cfg)
    kind = cfg.pop("type", name)
    cfg.setdefault("device", args.device)
    t = time.perf_counter()
    reward = build_reward(kind, **cfg)
    _sync(args.device)
    build_s = time.perf_counter() - t
    times = time_calls(lambda: reward(videos, prompts), args.repeats, args.device)
    return {"build_s": build_s, "batch_s": statistics.median(times)}


def bench_server(spec: dict[str, dict[str, Any]], videos, prompts, args) -> list[tuple[str, float, float | None]]:
    """(mode, seconds per batch, simulated sampling seconds) rows for the weight-free rewards together."""
    from vidpost.rewards.base import build_rewards
    from vidpost.rewards.server import RewardServer

    r = args.repeats
    combo = build_rewards(spec)
    inproc = statistics.median(time_calls(lambda: combo(videos, prompts), r, args.device))
    sample = inproc if args.sample_seconds is None else args.sample_seconds

    def inproc_loop() -> None:
        for _ in range(r):
            time.sleep(sample)  # sample batch i
            combo(videos, prompts)  # then score it

    t = time.perf_counter()
    inproc_loop()
    inproc_loop_s = (time.perf_counter() - t) / r

    with RewardServer(spec, workers=args.server_workers) as server:
        served = statistics.median(time_calls(lambda: server(videos, prompts), r, args.device))
        t = time.perf_counter()
        pending = None
        for _ in range(r):
            time.sleep(sample)  # sample batch i while the server scores batch i-1
            if pending is not None:
                pending.result()
            pending = server.submit(videos, prompts)
        pending.result()
        server_loop_s = (time.perf_counter() - t) / r
    return [
        ("in-process, scoring only", inproc, None),
        ("RewardServer, scoring only (submit → result)", served, None),
        ("in-process: sample, then score", inproc_loop_s, sample),
        ("RewardServer: score batch i while sampling batch i+1", server_loop_s, sample),
    ]


# -------------------------------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{platform.platform()}; CPU: {cpu or 'unknown'}, {os.cpu_count()} logical cores"
    if torch.cuda.is_available():
        text += f"; GPU: {torch.cuda.get_device_name()}"
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the RewardServer's spawned workers
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = load_config(args.config)
    names = args.rewards or (list(config) if config else list(ALL))

    videos, prompts = shapes_batch(args.batch, args.frames, args.height, args.width)
    videos = videos.to(args.device)
    failed = False
    rows = []
    server_rows: list[tuple[str, float, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="bench-rewards-") as tmp:
        kinds = {n: config.get(n, {}).get("type", n) for n in names}
        tiny = [n for n in names if n not in config and kinds[n] not in WEIGHT_FREE]
        cfgs = {n: dict(config.get(n, {})) for n in names}
        cfgs.update(miniature_configs(tiny, Path(tmp), prompts))
        for n in names:
            source = "config" if n in config else ("none" if kinds[n] in WEIGHT_FREE else "tiny")
            try:
                res = bench_reward(n, cfgs[n], videos, prompts, args)
                rows.append((n, source, res))
            except Exception as e:  # noqa: BLE001 - reported in the table, the run goes on
                traceback.print_exc()
                rows.append((n, source, {"error": f"{type(e).__name__}: {e}".splitlines()[0][:100]}))
                failed = True
            print(f"# {n}: done", file=sys.stderr, flush=True)

        free = {n: {**cfgs[n], "weight": 1.0} for n in names if kinds[n] in WEIGHT_FREE}
        if free and not args.no_server:
            try:
                server_rows = bench_server(free, videos.cpu(), prompts, args)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                failed = True

    b = args.batch
    cmd = " ".join(shlex.quote(a) for a in ["python", "benchmarks/bench_rewards.py", *sys.argv[1:]])
    lines = [
        "### Reward throughput (`benchmarks/bench_rewards.py`)",
        "",
        f"`{cmd}`",
        "",
        f"- machine: {machine()}",
        f"- torch {torch.__version__}, torch threads: {torch.get_num_threads()}; rewards on {args.device}",
        f"- input: {b} Shapes videos {list(videos.shape)} float32 in [0, 1]; 1 warm-up call, then the median of "
        f"{args.repeats} timed calls",
        "- weights: `tiny` = random miniature in the real format (`vidpost.rewards.testing`), `config` = from "
        "`--config`, `none` = weight-free",
        "",
        "| reward | weights | build s | ms / batch | ms / video | videos / s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for n, source, res in rows:
        if "error" in res:
            lines.append(f"| {n} | {source} | failed: {res['error']} | | | |")
            continue
        s = res["batch_s"]
        lines.append(f"| {n} | {source} | {res['build_s']:.2f} | {1000 * s:.1f} | {1000 * s / b:.2f} | {b / s:.1f} |")
    if server_rows:
        free_names = ", ".join(n for n in names if kinds[n] in WEIGHT_FREE)
        lines += [
            "",
            f"Weight-free rewards together ({free_names}) on the CPU, in-process vs `RewardServer` with "
            f"{args.server_workers} worker process(es). Sampling is simulated by a sleep (the CPU stays idle); the "
            f"two loops run {args.repeats} batches end to end (the server loop's time includes scoring the last "
            "batch, which nothing overlaps):",
            "",
            "| mode | simulated sampling s / batch | s / batch | videos / s |",
            "|---|---:|---:|---:|",
        ]
        for mode, s, sample in server_rows:
            lines.append(f"| {mode} | {'' if sample is None else f'{sample:.3f}'} | {s:.3f} | {b / s:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
