"""Positive controls of every `vidpost rl` algorithm on the shipped Shapes model (`-m slow`, minutes each).

Each algorithm trains a reward that every working estimator must find, within a fixed small budget, and then its
negation, from the same seed: the held-out value of that reward (the guard's gold metric: 16 held-out prompts,
fixed noise) must rise for the reward and end clearly above where the negation's run ends. The rewards are `motion` (the dynamic degree: how fast things move,
which the initial noise varies a lot inside a group, so selection and likelihood methods can see it) and, for
reward backprop, `brightness` (differentiable). The budgets and margins come from the runs recorded in
results/shapes-rl/positive-controls.md (`python -m pytest -m slow tests/test_rl_sanity.py -s` prints the values).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# algorithm → (preset, reward, its negation, iterations, margin, extra overrides). Measured with these settings
# (results/shapes-rl/positive-controls.md; the runs are deterministic: a rerun gives the same values), held-out
# value at the end for the reward / its negation, from 4.651 motion or 0.369 brightness:
#   nft 7.696 / 5.232, awm 7.707 / 4.815, rsft (conditional velocity) 5.587 / 4.912, grpo 5.266 / 4.827.
CONTROLS = {
    "nft": ("rl-nft.yaml", "{motion: 1.0}", "{motion: -1.0}", 6, 1.0, ()),
    "awm": ("rl-nft.yaml", "{motion: 1.0}", "{motion: -1.0}", 6, 1.0, ()),
    "rsft": ("rl-nft.yaml", "{motion: 1.0}", "{motion: -1.0}", 6, 0.3, ("forward.guided=false",)),
    "grpo": ("grpo.yaml", "{motion: 1.0}", "{motion: -1.0}", 6, 0.3, ()),
    "draft": ("rl-nft.yaml", "{brightness: 1.0}", "{brightness: {sign: -1.0}}", 6, 0.01, ()),
}


def control_run(
    out: Path, algorithm: str, spec: str, metric: str, iterations: int, preset: str = "rl-nft.yaml", *extra: str
) -> list[float]:
    """Train `spec` for `iterations` (16 videos each) → the held-out gold metric at the start and at the end."""
    overrides = [
        f"algorithm={algorithm}",
        f"output_dir={out}",
        "rollout.prompts_per_step=2",
        f"train.max_steps={iterations}",
        "optim.lr=1e-3",
        "optim.warmup_steps=0",
        "train.kl_beta=0",
        f"guard.every={iterations}",
        "guard.max_prompts=16",
        "guard.watch={}",
        "guard.margin=1e9",
        "checkpoint.every=0",
        f"rewards.spec={spec}",
        f"guard.metric={{{metric}: 1.0}}",
        "guard.extra={}",
        *extra,
    ]
    cmd = [sys.executable, "-m", "vidpost.pipelines.rl", "--config", str(ROOT / "configs" / "shapes" / preset)]
    proc = subprocess.run([*cmd, *overrides], capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    guard = json.loads((out / "guard.json").read_text())
    return [guard[0]["gold"], guard[-1]["gold"]]


@pytest.mark.parametrize("algorithm", list(CONTROLS))
def test_the_reward_rises_and_its_negation_falls(algorithm, tmp_path):
    preset, spec, negation, iterations, margin, extra = CONTROLS[algorithm]
    metric = "brightness" if "brightness" in spec else "motion"
    up = control_run(tmp_path / "up", algorithm, spec, metric, iterations, preset, *extra)
    down = control_run(tmp_path / "down", algorithm, negation, metric, iterations, preset, *extra)
    print(
        f"{algorithm}: held-out {metric} {up[0]:.4f} -> {up[1]:.4f} (reward), {down[0]:.4f} -> {down[1]:.4f} (negation)"
    )
    assert up[0] == pytest.approx(down[0], abs=1e-6)  # the same start
    # Training on its own samples at this learning rate also drifts the model (the same way in both runs: the
    # seeds and prompts are equal), so the reward's effect is the gap between the two runs; the reward's own run
    # must also end above the start.
    assert up[1] > up[0] + margin
    assert up[1] > down[1] + margin
