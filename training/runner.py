"""The stage runner: a YAML preset plus dotted overrides, `--help-config`, `--resume`, exit codes, the non-finite stop,
and the typed result every trainer returns (also written next to its output as the stage record `result.json`)."""

from __future__ import annotations

import argparse
import enum
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from vidpost.config import ArgumentParser, field_docs, load_config
from vidpost.errors import report
from vidpost.outputs import OutputLock, write_json

T = TypeVar("T")


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
    """A non-finite loss, gradient norm, reward or weight stopped the run (`Checkpoints.stop` words the message)."""


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
    extra: dict[str, Any] = field(default_factory=dict)
    """stage-specific outputs (e.g. distill's in-memory `student` and its `lit_layers`); the JSON-serialisable ones
    are kept in the stage record"""

    RECORD = "result.json"

    def to_dict(self) -> dict[str, Any]:
        """The stage record: every field but `history` (that is `history.json`) and the in-memory `extra` values."""
        plain = (str, int, float, bool, list, dict, type(None))
        return {
            "kind": self.kind,
            "final": str(self.final) if self.final is not None else None,
            "steps": self.steps,
            "metrics": self.metrics,
            "best": str(self.best) if self.best is not None else None,
            "base_model": self.base_model,
            "extra": {k: v for k, v in self.extra.items() if isinstance(v, plain)},
        }

    def write(self, out_dir: Path) -> Path:
        """Write the stage record `out_dir/result.json` (what a launched, multi-process run hands on)."""
        return write_json(Path(out_dir) / self.RECORD, self.to_dict())

    @classmethod
    def read(cls, out_dir: Path) -> TrainResult:
        """The stage record a finished run wrote into `out_dir`."""
        path = Path(out_dir) / cls.RECORD
        if not path.exists():
            raise ValueError(f"{out_dir} has no stage record ({cls.RECORD}); did the run finish?")
        d = json.loads(path.read_text())
        final, best = d.pop("final"), d.pop("best")
        return cls(final=Path(final) if final else None, best=Path(best) if best else None, **d)


def one_run_per_output(train_fn: Callable[..., T]) -> Callable[..., T]:
    """Decorates a trainer `train(cfg, resume=None)`: while it runs, its `cfg.output_dir` is locked
    (`vidpost.outputs.OutputLock`), so a second run on the same folder refuses with one line instead of mixing its
    files with the first's."""

    @functools.wraps(train_fn)
    def train(cfg: Any, *args: Any, **kwargs: Any) -> T:
        with OutputLock(cfg.output_dir, what=f"{train_fn.__module__.rsplit('.', 1)[-1]} run"):
            return train_fn(cfg, *args, **kwargs)

    return train


def add_stage_arguments(p: argparse.ArgumentParser, preset: str) -> None:
    """The arguments every training stage takes: a YAML preset, resume, config help and dotted overrides."""
    p.add_argument("--config", type=Path, help=f"YAML preset ({preset})")
    p.add_argument("--resume", help="'latest' or a checkpoint folder")
    p.add_argument("--help-config", action="store_true", help="list every config key with its documentation")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")


def parse_stage_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`p.parse_args`, with dotted overrides allowed anywhere (also after `--resume latest`)."""
    args, rest = p.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    unknown = [r for r in rest if r.startswith("-") or "=" not in r or not takes_overrides]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if rest:
        args.overrides = [*(args.overrides or []), *rest]
    return args


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
        report(f"error: {e}")
        return ExitCode.NON_FINITE, None
    except ValueError as e:
        report(f"error: {e}")
        return ExitCode.BAD_INPUT, None


def stage_main(
    cls: type,
    train_fn: Any,
    argv: list[str] | None,
    name: str,
    description: str,
    produced: str,
    preset: str | None = None,
    methods: tuple[tuple[str, ...], str] | None = None,
) -> int:
    """The command line of training stage `vidpost NAME` (preset `configs/<model>/<preset or NAME>.yaml`;
    `add_stage_arguments`, `run_stage`); on success it names what the stage `produced` ("weights", "student", ...) and
    where. `methods`: (the methods of a command that has several, this one) → a `--method` flag in the help. → exit
    code."""
    p = ArgumentParser(prog=f"vidpost {name}", description=description)
    add_stage_arguments(p, f"configs/<model>/{preset or name}.yaml")
    if methods is not None:
        choices, this = methods
        p.add_argument("--method", choices=choices, default=this, help=f"the method ({this} here)")
    code, result = run_stage(cls, train_fn, parse_stage_args(p, argv))
    if isinstance(result, TrainResult) and result.final is not None:
        print(f"done: {result.steps} steps; {produced} in {result.final}", file=sys.stderr)
    return code
