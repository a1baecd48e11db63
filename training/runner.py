"""The stage runner: a YAML preset plus dotted overrides, `--help-config`, `--resume`, and exit codes."""

from __future__ import annotations

import argparse
import enum
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vidpost.config import field_docs, load_config


class ExitCode(enum.IntEnum):
    """The exit status of every `vidpost` training command (and of the staged run)."""

    OK = 0
    ERROR = 1
    """an unexpected failure (a traceback)"""
    BAD_INPUT = 2
    """a bad config, flag or input file: one line naming the problem"""
    NON_FINITE = 3
    """a non-finite loss / gradient / weight stopped the run; the last good checkpoint is named"""
    GUARD_STOP = 4
    """the reward-hacking guard stopped the run; the best weights are in `best/`"""


class NonFiniteLoss(RuntimeError):
    pass


def non_finite_stop(what: str, value: float, step: int, last_good: Path | None) -> NonFiniteLoss:
    """The error that stops a run when `what` (the loss, a reward, ...) became `value` at `step`."""
    where = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was saved yet"
    return NonFiniteLoss(f"{what} became {value} at step {step}; stopping ({where})")


@dataclass
class TrainResult:
    """What a trainer produced, handed on by the staged run."""

    kind: Literal["lora", "full", "student", "rewriter"]
    """`final` is a diffusers LoRA folder, a complete diffusers model folder, a LiT student folder (a model folder
    plus its linear-attention weights) or a prompt-rewriter folder"""
    final: Path | None
    """the exported weights (None on processes other than the main one)"""
    steps: int
    """optimizer steps done in total"""
    history: list[dict[str, float]] = field(default_factory=list)
    """one record per step of this invocation"""
    metrics: dict[str, float] = field(default_factory=dict)
    """final metrics (validation, guard)"""
    best: Path | None = None
    """the best checkpoint by the stage's gold metric, where it keeps one (GRPO's guard `best/`)"""
    base_model: str | None = None
    """the model folder the weights were trained on (for a LoRA: the base it must be loaded onto)"""


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
        return ExitCode.OK, None
    try:
        cfg = load_config(cls, args.config, args.overrides)
        return ExitCode.OK, train_fn(cfg, resume=args.resume)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.NON_FINITE, None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT, None
