"""Recovery: what a trainer needs so that an interruption or a blow-up never leaves the user without a way on.

- `nonfinite(loss=, grad_norm=, params=)` names the first non-finite quantity of a step (loss, gradient norm, or a
  trainable weight after the optimizer step), or returns None.
- A checkpoint is *verified* when a forward pass of its weights on one fixed batch (the trainer's `probe`) is finite
  and within `PROBE_LIMIT`× the RMS the same probe had on the weights the run started from (weights that blew up
  but have not overflowed yet fail too); `Verifier.usable(...)` finds the newest checkpoint that passes, moving
  those that fail aside to `step_N.bad` so `--resume latest` never picks them.
- `resume_changes(saved, new)` compares the config a checkpoint was written with and the one given on resume: keys
  in `RESUMABLE` (learning rate and schedule, step budget, checkpoint / logging / validation / guard cadence, output
  paths) may change and are reported; any other change is a `ValueError` naming the key.
  `rebuild_schedule(optimizer, scheduler, lr)` applies a new base lr (and the schedule the scheduler's lambda reads)
  after the optimizer and scheduler states were restored, so an lr given on resume takes effect.
- Checkpoints are written through `vidpost.outputs.atomic_dir` (fsynced before the rename), so a kill or a power cut
  cannot leave a renamed folder with empty files.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

RESUMABLE: tuple[str, ...] = (
    "optim.lr",
    "optim.warmup_steps",
    "optim.schedule",
    "optim.min_lr_ratio",
    "optim.max_grad_norm",
    "train.max_steps",
    "checkpoint.",
    "log.",
    "validation.every",
    "guard.every",
    "guard.patience",
    "output_dir",
    "parallel.",
)
"""Dotted keys (or prefixes ending in ".") that may differ between a checkpoint's config and the resuming one (the
sequence-parallel layout changes how a step is computed, not what it computes)."""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= flatten(v, key + ".")
        else:
            out[key] = v
    return out


def _resumable(key: str, allowed: Iterable[str]) -> bool:
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed)


def resume_changes(
    saved: dict[str, Any], new: dict[str, Any], allowed: Iterable[str] = RESUMABLE
) -> list[tuple[str, Any, Any]]:
    """[(key, old, new)] for the keys that changed and may; a `ValueError` naming the first key that may not."""
    old_flat, new_flat = flatten(saved), flatten(new)
    allowed = tuple(allowed)
    changed = []
    for key in sorted(set(old_flat) | set(new_flat)):
        a, b = old_flat.get(key), new_flat.get(key)
        if a == b:
            continue
        if not _resumable(key, allowed):
            raise ValueError(
                f"cannot resume with {key}={b!r}: the checkpoint was written with {key}={a!r}, and only the learning "
                "rate and schedule, max_steps, the parallel layout and the checkpoint/logging/guard cadence may change "
                "on resume "
                "(start a new run in another output_dir to change it)"
            )
        changed.append((key, a, b))
    return changed


def describe_changes(changed: list[tuple[str, Any, Any]]) -> str:
    return "changed on resume: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed)


def rebuild_schedule(optimizer: torch.optim.Optimizer, scheduler: Any, lr: float) -> None:
    """After `load_state_dict`, make the base lr `lr` (times a param group's `lr_scale`, when it has one) and recompute the current lr from the scheduler's lambda at its
    restored position (a LambdaLR whose lambda reads the resuming config). With nothing changed the result is the
    restored lr exactly."""
    scheduler.base_lrs = [lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def nonfinite(
    *, loss: float | None = None, grad_norm: float | torch.Tensor | None = None, params: Iterable[torch.Tensor] = ()
) -> str | None:
    """'loss', 'gradient norm' or 'weights' — the first of them that is not finite — or None."""
    if loss is not None and not math.isfinite(float(loss)):
        return "loss"
    if grad_norm is not None and not math.isfinite(float(grad_norm)):
        return "gradient norm"
    with torch.no_grad():
        for p in params:
            if not torch.isfinite(p).all():
                return "weights"
    return None


PROBE_LIMIT = 100.0
"""A probe output whose RMS exceeds this multiple of the run's reference (the weights it started from) fails."""


def probe_rms(out: torch.Tensor) -> float:
    """The RMS of a probe's output (inf when it is not finite or overflows)."""
    out = out.detach().double()
    return float(out.pow(2).mean().sqrt()) if torch.isfinite(out).all() else math.inf


def probe_problem(rms: float, reference: float | None, limit: float = PROBE_LIMIT) -> str | None:
    """Why a probe output of this RMS fails — not finite, or more than `limit`× the reference's — or None."""
    if not math.isfinite(rms):
        return "non-finite"
    if reference is not None and rms > limit * max(reference, 1e-12):
        return f"{rms / max(reference, 1e-12):.3g}x the RMS it had at the start (limit {limit:g}x)"
    return None


WEIGHT_LIMIT = 1e4
"""A trainable weight larger than this multiple of max(1, the largest trainable weight the run started from) means
the weights blew up (normalised layers can keep the forward pass finite long after that)."""


def weight_max(params: Iterable[torch.Tensor]) -> float:
    """The largest |w| over `params` (nan when one is NaN, inf when one is infinite; 0 with none)."""
    with torch.no_grad():
        peaks = [p.detach().abs().amax().float() for p in params if p.numel()]
        return float(torch.stack(peaks).nan_to_num(nan=math.inf).amax()) if peaks else 0.0


def weight_problem(peak: float, reference: float | None, limit: float = WEIGHT_LIMIT) -> str | None:
    """Why trainable weights whose largest |w| is `peak` fail — not finite, or more than `limit`× max(1, reference)
    — or None."""
    if not math.isfinite(peak):
        return "non-finite"
    bound = limit * max(reference or 0.0, 1.0)
    if peak > bound:
        return f"as large as {peak:.3g} (limit {bound:.3g}: {limit:g}x max(1, the largest at the start))"
    return None


class Verifier:
    """Finds the newest usable checkpoint: `load(path)` puts a checkpoint's trainable weights into the model and
    returns them; `probe()` runs the model on a fixed batch and returns its output. Weights that fail `weight_problem`
    (against `weight_reference`, the largest weight the run started from) or an output that fails `probe_problem`
    (against `reference`, the run's probe RMS at its start) fail the checkpoint."""

    def __init__(
        self,
        load: Callable[[Path], Iterable[torch.Tensor]],
        probe: Callable[[], torch.Tensor] | None,
        reference: float | None = None,
        weight_reference: float | None = None,
    ):
        self.load, self.probe = load, probe
        self.reference, self.weight_reference = reference, weight_reference

    @torch.no_grad()
    def passes(self, path: Path) -> bool:
        """Whether the checkpoint's trainable weights (returned by `load(path)`, which also puts them in the model)
        are within bounds and the probe's output on them is."""
        if weight_problem(weight_max(self.load(path)), self.weight_reference) is not None:
            return False
        return self.probe is None or probe_problem(probe_rms(self.probe()), self.reference) is None

    def usable(self, candidates: list[Path]) -> Path | None:
        """The newest of `candidates` (oldest first) that passes; the newer ones that fail are renamed `*.bad`."""
        for path in reversed(candidates):
            try:
                if self.passes(path):
                    return path
            except ValueError:  # its files do not load (`checkpoint.CorruptCheckpoint`)
                pass
            os.replace(path, path.with_name(path.name + ".bad"))
        return None


def velocity_probe(
    adapter: Any,
    latents: torch.Tensor,
    cond: Any,
    model: torch.nn.Module | None = None,
    sigmas: tuple[float, ...] = (0.2, 0.5, 0.8),
    seed: int = 0,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> Callable[[], torch.Tensor]:
    """A video model's probe: its velocity on one clean latent ([1, C, F, H, W], e.g. the first cached clip) noised
    with fixed noise at each of `sigmas`, conditioned on `cond` (one prompt's embeddings), inside `autocast()` (the
    trainer's mixed precision, e.g. `accelerator.autocast`)."""
    latents = latents.detach()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)).to(latents)
    x = torch.cat([(1 - s) * latents + s * noise for s in sigmas])
    sigma = torch.tensor(sigmas, dtype=torch.float32, device=latents.device)
    cond = cond.repeat_interleave(len(sigmas))

    def probe() -> torch.Tensor:
        with autocast():
            return adapter.predict_velocity(x, sigma, cond, model=model)

    return probe


def logits_probe(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    """A language model's probe: its logits on one fixed, tokenized batch."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    return lambda: model(**inputs).logits


def stop_message(what: str, value: Any, step: int, usable: Path | None) -> str:
    """The one line a non-finite stop prints: what went wrong, where to resume from, and what to change."""
    if usable is None:
        where = "no usable checkpoint was saved before it; start again with a lower optim.lr"
    else:
        where = f"last usable checkpoint (verified by a finite forward pass): {usable}; resume from it with a lower optim.lr (--resume latest optim.lr=...)"
    return f"the {what} became {value} at step {step}; stopping ({where})"
