"""Prompt pools of the RL trainers: a list, a .txt / .jsonl file, or a named Shapes set."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_prompt_pool"]


def load_prompt_pool(spec: list[str] | str, pool_size: int) -> list[str]:
    """The prompts of `spec`: the list itself; "shapes-train" (canonical captions of the first `pool_size` Shapes
    train specs) or "shapes-heldout" (the held-out prompts); or the lines of a .txt file / the `prompt` (else
    `caption`) of each row of a .jsonl file, the first `pool_size` of them."""
    if isinstance(spec, list):
        if not spec:
            raise ValueError("rollout.prompts is empty")
        return list(spec)
    if spec == "shapes-train":
        from vidpost.shapes.splits import train_specs

        return [it["caption"] for it in train_specs(pool_size)]
    if spec == "shapes-heldout":
        from vidpost.shapes.splits import heldout_prompts

        return [it["caption"] for it in heldout_prompts()][:pool_size]
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"rollout.prompts: {spec!r} is neither a known set nor an existing file")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r.get("prompt") or r["caption"] for r in rows][:pool_size]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()][:pool_size]
