"""Training curves (`curves.png` beside a run's weights): panels of named curves drawn from the step history."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidpost.outputs import save_figure


@dataclass
class Curve:
    label: str
    x: list[float]
    y: list[float]
    style: str = "-"
    """matplotlib format string ("-", "o-", "s--", ...)"""
    alpha: float = 1.0


@dataclass
class Panel:
    title: str
    curves: list[Curve] = field(default_factory=list)
    xlabel: str = "step"
    log_y: bool = False


def history_curves(history: list[dict[str, Any]], keys: tuple[str, ...], alpha: float = 1.0) -> list[Curve]:
    """One curve per key of the per-step records, against their `step`."""
    steps = [h["step"] for h in history]
    return [Curve(key, steps, [h[key] for h in history], alpha=alpha) for key in keys]


def running_mean(x: list[float], y: list[float], label: str, window: int | None = None) -> Curve | None:
    """The `window`-point running mean of y (default: a twentieth of the points, at least 2); None under 5 points."""
    import numpy as np

    if len(y) < 5:
        return None
    k = window or max(2, len(y) // 20)
    return Curve(
        label.format(k=k), list(x[k - 1 :]), np.convolve(np.asarray(y), np.ones(k) / k, mode="valid").tolist()
    )


def plot_panels(path: Path, panels: list[Panel], panel_size: tuple[float, float] = (5.0, 3.5)) -> Path | None:
    """Draw the panels side by side into `path` (a PNG); panels without curves stay empty. Nothing when no curve
    has a point."""
    if not any(c.y for p in panels for c in p.curves):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(panel_size[0] * len(panels), panel_size[1]), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if not panel.curves:
            continue
        for c in panel.curves:
            ax.plot(c.x, c.y, c.style, label=c.label, alpha=c.alpha)
        if panel.log_y:
            ax.set_yscale("log")
        ax.set_xlabel(panel.xlabel)
        ax.set_title(panel.title)
        ax.legend()
    return save_figure(fig, path, dpi=100)
