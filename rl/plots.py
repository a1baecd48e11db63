"""The curves of an RL run: the training reward per iteration (with a running mean) and the held-out guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidpost.outputs import save_figure

__all__ = ["plot_rl_curves"]


def plot_rl_curves(history: list[dict[str, float]], guard: list[dict[str, float]], path: Path) -> None:
    """`history`: one record per iteration with "step" and "reward"; `guard`: the guard evaluations ("step", "gold",
    "extra/<name>"). Writes nothing without history."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [h["step"] for h in history]
    r = np.array([h["reward"] for h in history])
    axes[0].plot(steps, r, alpha=0.35, label="reward (per iteration)")
    if len(r) >= 5:
        k = max(2, len(r) // 20)
        smooth = np.convolve(r, np.ones(k) / k, mode="valid")
        axes[0].plot(steps[k - 1 :], smooth, label=f"reward ({k}-iteration mean)")
    axes[0].set_xlabel("iteration")
    axes[0].set_title("training reward")
    axes[0].legend()
    if guard:
        gs = [g["step"] for g in guard]
        axes[1].plot(gs, [g["gold"] for g in guard], "o-", label="guard: gold metric")
        for key in sorted({k for g in guard for k in g if k.startswith("extra/")}):
            axes[1].plot(gs, [g.get(key, np.nan) for g in guard], "s--", label=key)
        axes[1].set_xlabel("iteration")
        axes[1].set_title("held-out guard")
        axes[1].legend()
    save_figure(fig, path, dpi=100)
