"""Resumable checkpoints: trainable weights (safetensors), optimiser, scheduler, RNG, data position and EMA,
written atomically (`step_N.tmp/`, fsynced, then renamed) with the newest `keep_last` kept; `Checkpoints` is a
stage's checkpoint folder: resume (with the config changes a resume may make), save every N steps, and the
non-finite stop, which names the newest checkpoint whose weights still give a finite forward pass."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vidpost.config import config_hash, to_dict
from vidpost.media.data import StatefulBatchSampler
from vidpost.training.ema import EMA
from vidpost.training.recovery import (
    Verifier,
    describe_changes,
    fsync_dir,
    fsync_tree,
    nonfinite,
    probe_problem,
    probe_rms,
    rebuild_schedule,
    resume_changes,
    stop_message,
    weight_max,
    weight_problem,
)
from vidpost.training.runner import NonFiniteLoss


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


class NoDataPosition:
    """For stages whose data order is a function of (seed, step) (GRPO, the rewriter's trainers): the checkpoint
    has no sampler position to save or restore."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def completed_checkpoints(ckpt_root: Path) -> list[Path]:
    """The complete `step_N/` folders (with their state.json; not `.tmp` or `.bad`), oldest first."""
    done = [p for p in ckpt_root.glob("step_*") if p.is_dir() and p.name[len("step_") :].isdigit()]
    return sorted((p for p in done if (p / "state.json").exists()), key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = completed_checkpoints(ckpt_root)
    return done[-1] if done else None


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: StatefulBatchSampler,
    ema: EMA | None,
    keep_last: int,
    extra: dict[str, Any],
) -> Path:
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f"step_{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    if ema is not None:
        save_file({n: t.cpu().contiguous() for n, t in ema.shadow.items()}, str(tmp / "ema.safetensors"))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        tmp / "training_state.pt",
    )
    (tmp / "state.json").write_text(json.dumps({"step": step, "sampler": sampler.state_dict(), **extra}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    fsync_tree(tmp)  # the files are on disk before the folder takes its final name
    os.replace(tmp, final)
    fsync_dir(ckpt_root)
    steps = sorted(ckpt_root.glob("step_*[0-9]"), key=lambda p: int(p.name.split("_")[1]))
    for old in steps[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainable(path: Path, model: torch.nn.Module) -> list[torch.Tensor]:
    """Copy a checkpoint's trainable weights into `model`; → them."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ValueError(f"checkpoint {path} does not match the model (e.g. {missing[0]}); was the config changed?")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].dtype))
    return list(weights.values())


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: StatefulBatchSampler,
    ema: EMA | None,
) -> int:
    if not (path / "state.json").is_file():
        raise ValueError(
            f"--resume {path}: not a checkpoint folder (no state.json); pass 'latest' or a folder such as "
            "<output_dir>/checkpoints/step_0000200"
        )
    state = json.loads((path / "state.json").read_text())
    load_trainable(path, model)
    # Our own files; weights_only refuses anything but tensors and plain containers.
    training = torch.load(path / "training_state.pt", weights_only=True)
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    torch.set_rng_state(training["rng_cpu"])
    if torch.cuda.is_available() and training["rng_cuda"]:
        torch.cuda.set_rng_state_all(training["rng_cuda"])
    sampler.load_state_dict(state["sampler"])
    if ema is not None and (path / "ema.safetensors").exists():
        ema.shadow = load_file(str(path / "ema.safetensors"))
    return int(state["step"])


class Checkpoints:
    """A stage's `checkpoints/` folder: resume from it, save every `checkpoint.every` steps, and stop a run whose loss,
    gradient norm or weights became non-finite.

    `cfg` is the stage config (its `checkpoint` section; the whole config is recorded in every checkpoint and compared
    on resume); `data` is the sampler whose position is saved (`NoDataPosition` when the data order is a function of
    (seed, step)); `probe` runs the model on one fixed, cached batch and returns its output: a checkpoint is written
    only when that output is finite and within `recovery.PROBE_LIMIT`x the RMS it had on the weights the run started
    from, and the stop verifies the checkpoints again (newest first) and names the newest that passes, moving the
    others aside (`step_N.bad`). `main`: whether this process writes (the others only probe
    and stop with it)."""

    def __init__(
        self,
        out_dir: Path,
        cfg: Any,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        data: StatefulBatchSampler | NoDataPosition | None = None,
        ema: EMA | None = None,
        probe: Callable[[], torch.Tensor] | None = None,
        main: bool = True,
    ) -> None:
        self.root = Path(out_dir) / "checkpoints"
        self.every, self.keep_last = cfg.checkpoint.every, cfg.checkpoint.keep_last
        self.config_hash = config_hash(cfg)
        self.config, self.lr = to_dict(cfg), cfg.optim.lr
        self.model, self.optimizer, self.scheduler, self.ema = model, optimizer, scheduler, ema
        self.data = data if data is not None else NoDataPosition()
        self.probe, self.main = probe, main
        self.reference: float | None = None
        """the probe RMS of the weights the run started from (kept in every checkpoint as `probe_rms`)"""
        self.weight_reference: float | None = None
        """the largest trainable weight the run started from (kept in every checkpoint as `weight_max`)"""
        self.last_good: Path | None = None
        self.resumed_from: Path | None = None
        """the checkpoint `resume` restored"""

    def resume(self, resume: str | None, unit: str = "step") -> int:
        """`resume` is None, "latest" or a checkpoint folder → the step to continue from (0: from scratch)."""
        step = 0
        if resume:
            path = latest_checkpoint(self.root) if resume == "latest" else Path(resume)
            if path is None:
                print(f"--resume latest: no checkpoint in {self.root}, starting from scratch", file=sys.stderr)
            else:
                changed = self._changes(path)  # before loading: a refused change must not meet a shape mismatch
                step = load_checkpoint(path, self.model, self.optimizer, self.scheduler, self.data, self.ema)
                if changed:
                    rebuild_schedule(self.optimizer, self.scheduler, self.lr)
                    print(describe_changes(changed), file=sys.stderr)
                self.resumed_from = path
                print(f"resumed from {path} at {unit} {step}", file=sys.stderr)
        self.last_good = latest_checkpoint(self.root)
        self._set_reference()
        return step

    def _set_reference(self) -> None:
        """The probe RMS and largest weight the checks compare with: those the run's checkpoints recorded (its
        starting weights'), else the current weights' (a run from scratch, or a checkpoint that recorded none)."""
        if self.resumed_from is not None:
            state = json.loads((self.resumed_from / "state.json").read_text())
            self.reference, self.weight_reference = state.get("probe_rms"), state.get("weight_max")
        if self.weight_reference is None:
            self.weight_reference = weight_max(self._trainable())
        if self.reference is None and self.probe is not None:
            with torch.no_grad():
                self.reference = probe_rms(self.probe())

    def _changes(self, path: Path) -> list[tuple[str, Any, Any]]:
        """Compare the config the checkpoint was written with (when it recorded one) with this run's: → the changes
        to the learning rate, schedule, max_steps or a cadence (applied after the restore); any other change is a
        ValueError naming the key."""
        state = path / "state.json"
        saved = json.loads(state.read_text()).get("config") if state.is_file() else None
        return [] if saved is None else resume_changes(saved, self.config)

    def due(self, step: int) -> bool:
        """Whether `step` is a checkpoint step (every `checkpoint.every`; never when it is 0)."""
        return bool(self.every) and step % self.every == 0

    def save(self, step: int, extra: dict[str, Any] | None = None) -> Path | None:
        """Probe the weights (every process), then write `step_N/` (the main process; with the config and `extra` in
        its state.json); it becomes the last good one. A probe that fails (`recovery.probe_problem`) stops the run
        instead."""
        if self.probe is not None:
            with torch.no_grad():
                problem = probe_problem(probe_rms(self.probe()), self.reference)
            if problem is not None:
                raise self.stop("forward pass on the probe batch", problem, step)
        if not self.main:
            return None
        self.last_good = save_checkpoint(
            self.root,
            step,
            self.model,
            self.optimizer,
            self.scheduler,
            self.data,
            self.ema,
            self.keep_last,
            {
                "config_hash": self.config_hash,
                "config": self.config,
                "probe_rms": self.reference,
                "weight_max": self.weight_reference,
                **(extra or {}),
            },
        )
        return self.last_good

    def check_finite(self, what: str, value: float, step: int) -> None:
        """Stop the run when `value` (the loss, a reward, ...) is NaN or infinite."""
        if not math.isfinite(value):
            raise self.stop(what, value, step)

    def check_step(self, step: int, *, loss: float | None = None, grad_norm: Any = None) -> None:
        """After an optimizer step: stop the run when its loss, its gradient norm or a trainable weight is not
        finite."""
        what = nonfinite(loss=loss, grad_norm=grad_norm)
        if what == "loss":
            raise self.stop(what, loss, step)
        if what == "gradient norm":
            raise self.stop(what, float(grad_norm), step)
        problem = weight_problem(weight_max(self._trainable()), self.weight_reference)
        if problem is not None:
            raise self.stop("trainable weights", problem, step)

    def _trainable(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def stop(self, what: str, value: Any, step: int) -> NonFiniteLoss:
        """The error that stops the run at `step` (the step being taken, from 1): names the newest checkpoint verified by a finite probe (the main process
        verifies and moves failing ones aside) and suggests a lower learning rate."""
        usable = self.last_good
        if self.main and self.root.is_dir():
            candidates = [p for p in completed_checkpoints(self.root) if int(p.name.split("_")[1]) < step]
            load = lambda p: load_trainable(p, self.model)  # noqa: E731
            usable = Verifier(load, self.probe, self.reference, self.weight_reference).usable(candidates)
        return NonFiniteLoss(stop_message(what, value, step, usable))
