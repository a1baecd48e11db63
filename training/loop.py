"""The trainer core: what every trainer (sft, each RL algorithm, LiT distill, DMD2, QAT, the rewriter's sft and grpo)
shares, written once. A stage supplies its config section, its set-up and its step; its entry file keeps the loop
body readable top to bottom:

    trainer = Trainer("sft", cfg, mixed_precision=cfg.train.mixed_precision)  # lock, accelerator, layout, seed
    ...the stage's set-up: the model, its trainable parameters, the data...
    optimizer = trainer.optimize(params)                    # AdamW and the warm-up + decay schedule (`optim:`)
    trainer.begin(resume, model=transformer, data=sampler, kept=ema, probe=probe)  # checkpoints, resume, history,
    while trainer.running:                                  # trackers (named after the stage), the progress bar
        loss = ...; loss.backward()
        grad_norm = trainer.optimizer_step(params, ema=ema)  # clip, step, schedule, zero (+ the EMA)
        trainer.end_step({"loss": loss}, grad_norm=grad_norm)  # the non-finite checks, history, bar, logs, checkpoint
    trainer.finish(result)                                  # history.json, result.json, the trackers closed

What the core owns:
- the output folder's lock (`training.runner.one_run_per_output`, the decorator of every `train` function) and
  `config.json`;
- the accelerator (`training.tracking.make_accelerator`: CPU on machines without CUDA, mixed precision, trackers)
  and the sequence-parallel layout (`training.parallel`) when the config has a `parallel:` section;
- the global seed (`torch.manual_seed(train.seed)`, before the stage draws anything);
- the optimizer and schedule (`training.optim`), checkpoints and resume with the config compared
  (`training.checkpoint.Checkpoints`), the non-finite stops and the probe;
- `history.json` (continued over a resumed run), the trackers, the progress bar, the log cadence (`log.every`);
- the exit codes (`training.runner`) and the typed result (`TrainResult`, written as `result.json`).
Everything a stage draws per step comes from `training.seeding`. A step whose optimizer update is the stage's own
(DMD2's two updates, the RL algorithms' micro-batched updates) uses `trainer.optimizer` / `trainer.scheduler`
itself and still ends with `end_step`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vidpost.sections import LogConfig
from vidpost.training.checkpoint import Checkpoints
from vidpost.training.optim import make_optimizer, make_scheduler
from vidpost.training.parallel import Layout, make_layout
from vidpost.training.runner import TrainResult
from vidpost.training.tracking import make_accelerator, read_history, start_trackers, write_config, write_history


class Trainer:
    """The services of one training run (see the module docstring). `name` names the stage in trackers, the
    progress bar and messages; `one_process`: the stage cannot run under several processes (a one-line error)."""

    def __init__(
        self,
        name: str,
        cfg: Any,
        *,
        mixed_precision: str | None = None,
        one_process: bool = False,
        unit: str = "step",
    ) -> None:
        self.name, self.cfg, self.unit = name, cfg, unit
        self.out_dir = Path(cfg.output_dir)
        self.log: LogConfig = getattr(cfg, "log", None) or LogConfig(tensorboard=False)
        self.accelerator = make_accelerator(self.out_dir, self.log, mixed_precision)
        if one_process and self.accelerator.num_processes > 1:
            raise ValueError(f"vidpost {name} runs in one process (launch it without accelerate's multi-process mode)")
        parallel = getattr(cfg, "parallel", None)
        acc = self.accelerator
        self.layout = (
            make_layout(parallel, acc.num_processes, acc.process_index, acc.device)
            if parallel is not None
            else Layout(acc.num_processes, acc.process_index, 1, 1)
        )
        self.main: bool = self.accelerator.is_main_process
        self.device = self.accelerator.device
        torch.manual_seed(cfg.train.seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.ckpt: Checkpoints | None = None
        self.step = 0
        self.earlier: list[dict[str, Any]] = []
        """the history of the steps before this invocation (a resumed run continues `history.json`)"""
        self.history: list[dict[str, Any]] = []
        """this invocation's records, one per step"""
        self.bar: Any = None
        self._t0 = self._start = time.perf_counter()
        self._steps_done = 0

    # ---- set-up ----------------------------------------------------------------------------------------------------
    def optimize(self, params: list[torch.nn.Parameter] | list[dict], total: int | None = None) -> Any:
        """AdamW over `params` (parameters or param groups) with the `optim:` schedule over `total` optimizer steps
        (default `train.max_steps`)."""
        self.optimizer = make_optimizer(params, self.cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, self.cfg.optim, total or self.cfg.train.max_steps)
        return self.optimizer

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model wrapped for data-parallel processes (and the optimizer with it); → the wrapped model."""
        model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        return model

    def begin(
        self,
        resume: str | None,
        *,
        model: torch.nn.Module,
        data: Any = None,
        kept: Any = None,
        probe: Callable[[], torch.Tensor] | None = None,
        desc: str | None = None,
    ) -> int:
        """`config.json`; the checkpoints of `model`'s trainable weights (with the optimizer, schedule, `data`'s
        position and `kept`: an EMA or an old policy, whatever has `shadow`) and the state of `resume`; the history
        so far, the trackers and the progress bar. → the step to continue from."""
        if self.main:
            write_config(self.out_dir, self.cfg)
        self.ckpt = Checkpoints(
            self.out_dir, self.cfg, model, self.optimizer, self.scheduler, data, kept, probe, self.main
        )
        self.step = self.ckpt.resume(resume, unit=self.unit)
        self.earlier = read_history(self.out_dir, self.step)
        start_trackers(self.accelerator, self.log, self.name, self.cfg)
        total = self.cfg.train.max_steps
        self.bar = tqdm(total=total, initial=self.step, desc=desc or self.name, disable=not self.main)
        self._t0 = self._start = time.perf_counter()
        return self.step

    # ---- the loop ----------------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.step < self.cfg.train.max_steps

    def check_finite(self, what: str, value: float) -> None:
        """Stop the run (exit 3) when `value` (a loss, a reward) of the step being taken is not finite."""
        self.ckpt.check_finite(what, value, self.step + 1)

    def clip(self, params: list[torch.nn.Parameter], always: bool = False) -> float | None:
        """Clip the gradients of `params` to `optim.max_grad_norm` → their norm before clipping (None when clipping
        is off, unless `always`: then the norm is measured)."""
        max_norm = self.cfg.optim.max_grad_norm
        if not max_norm and not always:
            return None
        return float(self.accelerator.clip_grad_norm_(params, max_norm or float("inf")))

    def optimizer_step(
        self, params: list[torch.nn.Parameter], *, ema: Any = None, model: Any = None, always_norm: bool = False
    ) -> float | None:
        """Clip (`clip`), optimizer step, schedule step, zero the gradients, then the EMA of `model` → the norm."""
        grad_norm = self.clip(params, always=always_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        return grad_norm

    def end_step(
        self,
        record: dict[str, Any],
        *,
        grad_norm: Any = None,
        check: bool = True,
        checkpoint: bool = True,
        postfix: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The step is taken: the non-finite checks of its gradient norm and the weights (`check`), its record
        (`record` + lr, grad_norm, the step's seconds) in the history, the progress bar and — every `log.every`
        steps — the trackers, and a checkpoint when one is due (`checkpoint`; else the stage calls `save`).
        → the record."""
        self.step += 1
        self._steps_done += 1
        if check:
            self.ckpt.check_step(self.step, grad_norm=grad_norm)
        rec = dict(record)
        rec.setdefault("lr", self.scheduler.get_last_lr()[0])
        if grad_norm is not None:
            rec["grad_norm"] = float(grad_norm)
        now = time.perf_counter()
        rec["step_seconds"] = now - self._t0
        self._t0 = now
        self.history.append({"step": self.step, **rec})
        self.bar.update(1)
        shown = {k: f"{rec[k]:.4g}" for k in ("loss", "reward") if isinstance(rec.get(k), float)}
        self.bar.set_postfix(postfix or shown)
        if self.due(self.log.every) or not self.running:
            speed = {"it_per_s": self._steps_done / max(1e-9, now - self._start)}
            self.accelerator.log({f"train/{k}": v for k, v in (rec | speed).items()}, step=self.step)
        if checkpoint and self.ckpt.due(self.step):
            self.save()
        return rec

    def due(self, every: int) -> bool:
        """Whether the step just taken is a multiple of `every` (never when `every` is 0)."""
        return bool(every) and self.step % every == 0

    def save(self, extra: dict[str, Any] | None = None) -> None:
        """A checkpoint of the step just taken (with `extra` in its state.json) and the history so far."""
        if self.ckpt.save(self.step, extra) is not None:
            write_history(self.out_dir, self.earlier + self.history)

    def log_metrics(self, metrics: dict[str, float], prefix: str) -> None:
        self.accelerator.log({f"{prefix}/{k}": v for k, v in metrics.items()}, step=self.step)

    # ---- the end -----------------------------------------------------------------------------------------------------
    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def finish(self, result: TrainResult) -> TrainResult:
        """After the stage exported its weights: `history.json` (the whole run), the stage record `result.json`
        (`result.history` is this invocation's), the trackers closed. → `result`."""
        self.close_bar()
        result.history = self.history
        if self.main:
            write_history(self.out_dir, self.earlier + self.history)
            result.write(self.out_dir)
        self.accelerator.end_training()
        return result

    @property
    def whole_history(self) -> list[dict[str, Any]]:
        return self.earlier + self.history
