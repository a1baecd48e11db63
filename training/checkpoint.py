"""Resumable checkpoints: trainable weights (safetensors), optimiser, scheduler, RNG (safetensors + a JSON skeleton:
nothing is unpickled), data position and EMA, written atomically (`vidpost.outputs.atomic_dir`: `step_N.tmp/`,
fsynced, then renamed) with the newest `keep_last` kept; `--resume latest` takes the newest checkpoint that loads
(one that does not is moved aside to `step_N.bad` and named); `Checkpoints` is a
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
from vidpost.outputs import atomic_dir
from vidpost.training.ema import EMA
from vidpost.training.recovery import (
    Verifier,
    describe_changes,
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


TRAINING_STATE = "training_state"
"""`training_state.safetensors` + `training_state.json`: the optimizer, scheduler and RNG states (tensors in the
safetensors file, everything else in the JSON skeleton that names them). Nothing in a checkpoint is unpickled."""
LEGACY_TRAINING_STATE = "training_state.pt"
"""the torch.save file of checkpoints written before (read with `weights_only=True`)"""


class CorruptCheckpoint(ValueError):
    """A checkpoint folder whose files do not load (truncated, not ours); the message names the file."""


def pack_state(obj: Any, tensors: dict[str, torch.Tensor], key: str = "s") -> Any:
    """A nested state (dicts with str or int keys, lists, tuples, tensors, numbers, strings, None) → a JSON skeleton;
    its tensors go into `tensors` under the names the skeleton records (`unpack_state` inverts it exactly)."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"tensor": key}
    if isinstance(obj, dict):
        return {"dict": [[k, pack_state(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        kind = "tuple" if isinstance(obj, tuple) else "list"
        return {kind: [pack_state(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state ({key})")


def unpack_state(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    ((kind, body),) = node.items()
    if kind == "tensor":
        return tensors[body]
    if kind == "dict":
        return {k: unpack_state(v, tensors) for k, v in body}
    if kind == "list":
        return [unpack_state(v, tensors) for v in body]
    if kind == "tuple":
        return tuple(unpack_state(v, tensors) for v in body)
    assert kind == "value", kind
    return body


def write_state(folder: Path, state: dict[str, Any], name: str = TRAINING_STATE) -> None:
    """`state` (see `pack_state`) as `<folder>/<name>.safetensors` + `<folder>/<name>.json`."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = pack_state(state, tensors)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton) + "\n")


def read_state(folder: Path, name: str = TRAINING_STATE) -> dict[str, Any]:
    """What `write_state` wrote; a `CorruptCheckpoint` naming the file when it does not load."""
    skeleton = _read_json(folder / f"{name}.json")
    tensors = _read_tensors(folder / f"{name}.safetensors")
    try:
        return unpack_state(skeleton, tensors)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise CorruptCheckpoint(f"{folder / name}.*: not a vidpost training state ({e!r})") from None


def state_bytes(state: Any) -> int:
    """The bytes of every tensor in a nested state (what its safetensors files take, roughly)."""
    tensors: dict[str, torch.Tensor] = {}
    pack_state(state, tensors)
    return sum(t.numel() * t.element_size() for t in tensors.values())


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
    previous = latest_checkpoint(ckpt_root) if ckpt_root.is_dir() else None
    intact = f"the previous checkpoint {previous.name} is intact" if previous else "no checkpoint was written yet"
    trainable = trainable_state(model)
    need = state_bytes([trainable, optimizer.state_dict(), ema.shadow if ema is not None else {}])
    with atomic_dir(final, what=f"checkpoint {final.name}", intact=intact, need=need) as tmp:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        if ema is not None:
            save_file({n: t.cpu().contiguous() for n, t in ema.shadow.items()}, str(tmp / "ema.safetensors"))
        training = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        write_state(tmp, training)
        (tmp / "state.json").write_text(json.dumps({"step": step, "sampler": sampler.state_dict(), **extra}, indent=2))
    steps = sorted(ckpt_root.glob("step_*[0-9]"), key=lambda p: int(p.name.split("_")[1]))
    for old in steps[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainable(
    path: Path, model: torch.nn.Module, weights: dict[str, torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """Copy a checkpoint's trainable weights (read from `path` unless given) into `model`; → them."""
    weights = _read_tensors(path / "trainable.safetensors") if weights is None else weights
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ValueError(f"checkpoint {path} does not match the model (e.g. {missing[0]}); was the config changed?")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].dtype))
    return list(weights.values())


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{file} is missing") from None
    except Exception as e:  # safetensors' SafetensorError (truncated, not a safetensors file), OSError
        raise CorruptCheckpoint(f"{file} does not load ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{file} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpoint(f"{file} does not load ({_first_line(e)})") from None


def read_training_state(path: Path) -> dict[str, Any]:
    """The optimizer / scheduler / RNG states of checkpoint `path` (`TRAINING_STATE`, or the legacy torch.save file,
    read with `weights_only=True`)."""
    if (path / LEGACY_TRAINING_STATE).exists() and not (path / f"{TRAINING_STATE}.json").exists():
        import pickle

        file = path / LEGACY_TRAINING_STATE
        try:
            return torch.load(file, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError):
            raise CorruptCheckpoint(
                f"{file} is not a vidpost training state (truncated, or not written by vidpost); it was not loaded"
            ) from None
    return read_state(path)


def read_checkpoint(path: Path, ema: bool) -> dict[str, Any]:
    """Every file of checkpoint `path`, read (nothing applied yet): a `CorruptCheckpoint` names the first that does
    not load."""
    if not (path / "state.json").is_file():
        raise ValueError(
            f"--resume {path}: not a checkpoint folder (no state.json); pass 'latest' or a folder such as "
            "<output_dir>/checkpoints/step_0000200"
        )
    state = _read_json(path / "state.json")
    if not isinstance(state, dict) or "step" not in state:
        raise CorruptCheckpoint(f"{path / 'state.json'} is not a vidpost checkpoint state")
    out = {"state": state, "trainable": _read_tensors(path / "trainable.safetensors")}
    out["training"] = read_training_state(path)
    if ema and (path / "ema.safetensors").exists():
        out["ema"] = _read_tensors(path / "ema.safetensors")
    return out


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: StatefulBatchSampler,
    ema: EMA | None,
    read: dict[str, Any] | None = None,
) -> int:
    """Restore checkpoint `path` (its files as `read_checkpoint` gives them, read here unless given) → its step."""
    read = read_checkpoint(path, ema is not None) if read is None else read
    load_trainable(path, model, read["trainable"])
    training = read["training"]
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    torch.set_rng_state(training["rng_cpu"])
    if torch.cuda.is_available() and training["rng_cuda"]:
        torch.cuda.set_rng_state_all(training["rng_cuda"])
    sampler.load_state_dict(read["state"]["sampler"])
    if ema is not None and "ema" in read:
        ema.shadow = read["ema"]
    return int(read["state"]["step"])


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
        """`resume` is None, "latest" or a checkpoint folder → the step to continue from (0: from scratch). With
        "latest", a checkpoint whose files do not load is moved aside (`step_N.bad`) with a warning and the one before
        it is taken; a named folder that does not load is a one-line error."""
        step = 0
        if resume:
            path, read = self._readable(resume)
            if path is None:
                print(f"--resume latest: no checkpoint in {self.root}, starting from scratch", file=sys.stderr)
            else:
                changed = self._changes(path)  # before loading: a refused change must not meet a shape mismatch
                step = load_checkpoint(path, self.model, self.optimizer, self.scheduler, self.data, self.ema, read)
                if changed:
                    rebuild_schedule(self.optimizer, self.scheduler, self.lr)
                    print(describe_changes(changed), file=sys.stderr)
                self.resumed_from = path
                print(f"resumed from {path} at {unit} {step}", file=sys.stderr)
        self.last_good = latest_checkpoint(self.root)
        self._set_reference()
        return step

    def _readable(self, resume: str) -> tuple[Path | None, dict[str, Any] | None]:
        """The checkpoint `resume` names and its files, read (see `resume`)."""
        if resume != "latest":
            path = Path(resume)
            try:
                return path, read_checkpoint(path, self.ema is not None)
            except CorruptCheckpoint as e:
                raise ValueError(f"--resume {path}: {e}") from None
        for path in reversed(completed_checkpoints(self.root) if self.root.is_dir() else []):
            try:
                return path, read_checkpoint(path, self.ema is not None)
            except CorruptCheckpoint as e:
                bad = path.with_name(path.name + ".bad")
                shutil.rmtree(bad, ignore_errors=True)
                os.replace(path, bad)
                print(
                    f"warning: checkpoint {path.name} does not load ({e}); moved aside to {bad.name}", file=sys.stderr
                )
        return None, None

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
