"""The reward-hacking guard of an RL run: a gold metric on held-out prompts, the best weights, and the stop rule.

Every `every` optimizer steps (and once before the first), the guard samples the held-out prompts with the ODE
sampler (fixed seeds, so every evaluation sees the same initial noise) and scores the videos with the gold metric
(a reward spec that must not be a training reward) and the `extra` rewards. The weights with the highest gold
metric so far are exported to `best/`. The run stops (exit code 4) when the gold metric falls more than `margin`
below its best, or when a watched extra metric (`watch`: name → margin) falls more than its margin below its own
best over the earlier evaluations; `best/` stays the gold metric's best.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vidpost.config import NonNegativeFloat, NonNegativeInt, PositiveInt
from vidpost.models.base import VideoModelAdapter
from vidpost.outputs import write_json

__all__ = ["Guard", "GuardConfig", "stop_everywhere", "watch_tripped"]


@dataclass
class GuardConfig:
    every: NonNegativeInt = 10
    """evaluate the gold metric every N iterations (0 disables the guard)"""
    prompts: list[str] | str = "shapes-heldout"
    max_prompts: PositiveInt = 32
    metric: dict[str, Any] = field(default_factory=lambda: {"verifier_binary": 1.0})
    """the gold metric as a reward spec (weighted mean over the prompts); must not be a training reward"""
    margin: float = 0.1
    """stop when the metric falls more than this below its best"""
    steps: PositiveInt = 20
    guidance_scale: NonNegativeFloat = 5.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=lambda: {"temporal": 1.0})
    """further rewards logged on the same videos"""
    watch: dict[str, float] = field(default_factory=dict)
    """`extra` name → margin: also stop when that metric falls more than its margin below its best so far (e.g. the
    training reward itself on the held-out prompts, which a noisy policy gradient can walk downhill while the gold
    metric holds); `best/` stays the gold metric's best"""

    def __post_init__(self) -> None:
        unwatched = sorted(set(self.watch) - set(self.extra or {}))
        if unwatched:
            raise ValueError(f"guard.watch: {unwatched} not in guard.extra (known: {sorted(self.extra or {})})")


def watch_tripped(history: list[dict[str, float]], watch: dict[str, float], best_dir: Path) -> str | None:
    """The stop message when the newest guard entry has a watched extra metric more than its margin below the best
    value of that metric over the earlier entries; None otherwise."""
    *before, now = history
    for name, margin in watch.items():
        key = f"extra/{name}"
        top = max(before, key=lambda h: h[key], default=None)
        if top is not None and now[key] < top[key] - margin:
            return (
                f"guard: {name} {now[key]:.3f} at iteration {now['step']} fell more than {margin} below its best "
                f"{top[key]:.3f} (iteration {top['step']}); best weights (by the gold metric) kept in {best_dir}"
            )
    return None


def stop_everywhere(accelerator: Any, stopped: str | None) -> str | None:
    """The stop message every process agrees on: the guard runs on the main process only, so with several processes
    the others learn of its stop through a reduction (and stop with a generic message)."""
    if accelerator.num_processes > 1:
        flag = torch.tensor([1.0 if stopped else 0.0], device=accelerator.device)
        if accelerator.reduce(flag, reduction="sum").item() > 0 and stopped is None:
            stopped = "guard tripped on the main process"
    return stopped


class Guard:
    """The guard of one run (see the module doc). `prompts` are the held-out prompts (the first `max_prompts` are
    used), `size` the (frames, height, width) and `shift` the sampling shift of its videos; `export` writes the
    current weights to a folder. Its state (`history`, `best`) goes into the run's checkpoints. With `every` 0 it
    builds no reward and is never due (its state is kept as loaded)."""

    def __init__(
        self,
        cfg: GuardConfig,
        prompts: list[str],
        *,
        size: tuple[int, int, int],
        shift: float,
        out_dir: Path,
        export: Callable[[Path], Any],
    ) -> None:
        from vidpost.rewards.base import build_rewards

        self.cfg, self.prompts, self.size, self.shift = cfg, prompts[: cfg.max_prompts], size, shift
        self.out_dir, self.export = out_dir, export
        self.metric = build_rewards(cfg.metric) if cfg.every else None
        self.extra = build_rewards(cfg.extra) if cfg.every and cfg.extra else None
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"

    def due(self, step: int) -> bool:
        return bool(self.cfg.every) and step % self.cfg.every == 0

    @property
    def best_step(self) -> int | None:
        return None if self.best is None else self.best["step"]

    def latest_metrics(self) -> dict[str, float]:
        """The newest evaluation's metrics as {"guard/gold": ..., "guard/extra/<name>": ...} (empty before any)."""
        return {f"guard/{k}": v for k, v in self.history[-1].items() if k != "step"} if self.history else {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "guard_history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.history = state.get("best"), state.get("guard_history", [])

    def check(self, adapter: VideoModelAdapter, step: int) -> tuple[dict[str, float], str | None]:
        """Evaluate the weights of iteration `step` (writing `guard/step_N/`), export them to `best/` if the gold
        metric is a new best; → (the metrics, the stop message or None)."""
        g = self.evaluate(adapter, self.out_dir / "guard" / f"step_{step:07d}")
        self.history.append({"step": step, **g})
        stopped = None
        if self.best is None or g["gold"] > self.best["gold"]:
            self.best = {"step": step, "gold": g["gold"]}
            self.export(self.best_dir)
        elif g["gold"] < self.best["gold"] - self.cfg.margin:
            stopped = (
                f"guard: {g['gold']:.3f} at iteration {step} fell more than {self.cfg.margin} below the best "
                f"{self.best['gold']:.3f} (iteration {self.best['step']}); best weights kept in {self.best_dir}"
            )
        return g, stopped or watch_tripped(self.history, self.cfg.watch, self.best_dir)

    @torch.no_grad()
    def evaluate(self, adapter: VideoModelAdapter, out: Path | None) -> dict[str, float]:
        """ODE samples of the guard prompts → the gold metric (and the extra rewards), optionally a contact sheet and
        metrics.json in `out`."""
        from vidpost.models.sampling import sample

        cfg, prompts = self.cfg, self.prompts
        was = adapter.transformer.training
        adapter.transformer.eval()
        videos = []
        for i in range(0, len(prompts), 8):
            videos.append(
                sample(
                    adapter,
                    prompts[i : i + 8],
                    num_frames=self.size[0],
                    height=self.size[1],
                    width=self.size[2],
                    num_inference_steps=cfg.steps,
                    guidance_scale=cfg.guidance_scale,
                    shift=self.shift,
                    seed=cfg.seed + i,
                ).cpu()
            )
        adapter.transformer.train(was)
        v = torch.cat(videos)
        gold = self.metric(v, prompts)
        result = {"gold": float(gold.score.mean())}
        for k, val in gold.components.items():
            result[f"gold/{k}"] = float(val.mean())
        if self.extra is not None:
            ex = self.extra(v, prompts)
            for k, val in ex.components.items():
                if "/" not in k:
                    result[f"extra/{k}"] = float(val.mean())
        if out is not None:
            from vidpost.media.video_io import contact_sheet

            out.mkdir(parents=True, exist_ok=True)
            contact_sheet(list(v[:16]), out / "contact_sheet.png", labels=prompts[:16])
            write_json(out / "metrics.json", result)
        return result
