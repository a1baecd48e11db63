"""The RL algorithms of `vidpost rl`, one file each: its config section, its loss and its iteration update on the
shared scaffold (`vidpost.rl.scaffold`). Each module has

    OLD_POLICY                     whether the run keeps an old policy (nft, awm): it rolls out and the checkpoints
                                   keep it; then `old_decay(cfg, optimizer_steps)` is its update's decay
    update(run, rollout, adv)      the iteration's update → its statistics (`loss`, `kl`, `grad_norm`, `summary`)

grpo (`grpo.py`), the forward-process methods nft, awm and rsft (`nft.py`, `awm.py`, `rsft.py` over `forward.py`)
and draft (`draft.py`)."""

from __future__ import annotations

import importlib
from types import ModuleType


def algorithm_module(name: str) -> ModuleType:
    """The module of algorithm `name` (one of `vidpost.rl.config.ALGORITHMS`)."""
    return importlib.import_module(f"vidpost.rl.algorithms.{name}")
