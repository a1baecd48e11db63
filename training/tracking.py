"""What a training run writes beside its weights: the accelerate set-up with its trackers (tensorboard by default,
wandb optional), `config.json` and `history.json` (one record per optimizer step)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vidpost.config import to_dict
from vidpost.outputs import write_json
from vidpost.sections import LogConfig


def make_accelerator(out_dir: Path, log: LogConfig, mixed_precision: str | None = None) -> Any:
    """An `accelerate.Accelerator` logging to `out_dir/logs` with the trackers `log` turns on. On CPU-only machines
    it runs on the CPU, which is what enables gloo multi-process runs."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        log_with=trackers(log) or None,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
    )


def trackers(log: LogConfig) -> list[str]:
    return [name for name, on in (("tensorboard", log.tensorboard), ("wandb", log.wandb)) if on]


def start_trackers(accelerator: Any, log: LogConfig, name: str, cfg: Any) -> None:
    """Open the run's trackers (when any is on), with the config's top-level sections as hyperparameters."""
    if trackers(log):
        accelerator.init_trackers(name, config={k: str(v) for k, v in to_dict(cfg).items()})


def write_config(out_dir: Path, cfg: Any) -> None:
    """`out_dir/config.json`: the resolved config of the run (creates `out_dir`)."""
    write_json(out_dir / "config.json", to_dict(cfg))


def write_history(out_dir: Path, history: list[dict[str, Any]]) -> Path:
    return write_json(out_dir / "history.json", history, indent=None)


def read_history(out_dir: Path, up_to: int) -> list[dict[str, Any]]:
    """The records of steps ≤ `up_to` from an earlier run's `history.json` (a resumed run continues it); [] if none."""
    path = out_dir / "history.json"
    if not up_to or not path.exists():
        return []
    return [h for h in json.loads(path.read_text()) if h["step"] <= up_to]
