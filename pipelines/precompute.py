"""`vidpost sft precompute --config configs/<model>/sft.yaml`: encode VAE latents + text embeddings once (Stage 1 SFT).

Reads the `model` and `data` sections of an SFT config and fills `data.cache_dir` (default <output_dir>/cache)
with safetensors shards; resumable (finished shards are skipped); unreadable videos are skipped and listed in
`bad_videos.jsonl`. Training then reads the cache, so the VAE and text encoder need not be in GPU memory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from vidpost.config import ArgumentParser, load_config
from vidpost.media.data import precompute, read_manifest
from vidpost.models import load
from vidpost.models.base import DTYPES
from vidpost.pipelines.sft import SFTConfig, buckets_of
from vidpost.training.runner import ExitCode


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost sft precompute", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=8, help="clips encoded together")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    try:
        cfg = load_config(SFTConfig, args.config, args.overrides)
        if not cfg.data.manifest:
            raise ValueError("data.manifest is empty")
        adapter = load(cfg.model.path, dtype=DTYPES[cfg.model.dtype], device=args.device)
        rows = read_manifest(cfg.data.manifest, cfg.data.caption_key)
        cache_dir = Path(cfg.data.cache_dir or Path(cfg.output_dir) / "cache")
        summary = precompute(
            adapter, rows, buckets_of(cfg), cache_dir, shard_size=cfg.data.shard_size, batch_size=args.batch_size
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    print(json.dumps(summary, indent=2))
    return ExitCode.OK


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
