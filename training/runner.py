"""The stage runner: a YAML preset plus dotted overrides, `--help-config`, `--resume`, and exit codes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vidpost.config import field_docs, load_config


class NonFiniteLoss(RuntimeError):
    pass


def add_stage_arguments(p: argparse.ArgumentParser, preset: str) -> None:
    """The arguments every training stage takes: a YAML preset, resume, config help and dotted overrides."""
    p.add_argument("--config", type=Path, help=f"YAML preset ({preset})")
    p.add_argument("--resume", help="'latest' or a checkpoint folder")
    p.add_argument("--help-config", action="store_true", help="list every config key with its documentation")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")


def run_stage(cls: type, train_fn: Any, args: argparse.Namespace) -> tuple[int, dict[str, Any] | None]:
    """`--help-config`, or load the config and train; → (exit code, result). Exit 3: a non-finite loss; 2: a bad
    config or input (the message is printed)."""
    if args.help_config:
        for k, v in field_docs(cls).items():
            print(f"{k:32s} {v}")
        return 0, None
    try:
        cfg = load_config(cls, args.config, args.overrides)
        return 0, train_fn(cfg, resume=args.resume)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 3, None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2, None
