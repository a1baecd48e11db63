"""The video size and schedule shift a trainer renders at (GRPO rollouts, distillation trajectories, the rewriter's
videos): the config section's values, else the model folder's generation defaults."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vidpost.models import VideoModelAdapter


def video_size_and_shift(
    adapter: VideoModelAdapter, model_dir: Path, section: Any
) -> tuple[tuple[int, int, int], float]:
    """((num_frames, height, width), shift) from `section` (a config section with `num_frames`, `height`, `width` and
    `shift`, each null for the default): the size defaults to the model's `generation` settings (81×480×832 without
    them) and is checked against the model; the shift defaults to the model's."""
    from vidpost.models.base import read_vidpost_config

    gen = read_vidpost_config(model_dir).get("generation", {})
    size = (
        section.num_frames or gen.get("num_frames", 81),
        section.height or gen.get("height", 480),
        section.width or gen.get("width", 832),
    )
    adapter.validate_size(*size)
    shift = section.shift if section.shift is not None else adapter.default_shift
    return size, shift
