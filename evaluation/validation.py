"""Validation samples of a training run (`validation:` of `vidpost sft`), generated through the evaluation core:
the same per-video seeding rule as `vidpost eval` / `generate` (`vidpost.seeding`: prompt i from seed + i), so the
validation score of a checkpoint is what `vidpost eval` gives on the same prompts and seed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vidpost.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from vidpost.evaluation.generate import sample_batches
from vidpost.evaluation.settings import GenerationSettings
from vidpost.models.base import VideoModelAdapter
from vidpost.outputs import write_text
from vidpost.seeding import prompt_seed, video_seed


@dataclass
class ValidationConfig:
    every: NonNegativeInt = 0
    """sample the validation prompts every N steps (0 disables; always done at the end if prompts are set)"""
    prompts: list[str] | str = "shapes-heldout"
    """a list of prompts, or "shapes-heldout" (the Shapes world held-out set, scored with the verifier)"""
    max_prompts: PositiveInt = 16
    steps: PositiveInt = 20
    guidance_scale: NonNegativeFloat = 5.0
    shift: PositiveFloat | None = None
    """sampling shift (null: the model's default)"""
    seed: int = 0
    """prompt i is sampled from seed + i (the evaluation core's rule)"""

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str) and self.prompts != "shapes-heldout":
            raise ValueError(f"validation.prompts must be a list or 'shapes-heldout', got {self.prompts!r}")


def validation_prompts(cfg: ValidationConfig) -> tuple[list[str], list[dict] | None]:
    """(prompts, Shapes specs or None)."""
    if cfg.prompts == "shapes-heldout":
        from vidpost.shapes.splits import heldout_prompts

        items = heldout_prompts()[: cfg.max_prompts]
        return [it["caption"] for it in items], [it["spec"] for it in items]
    return list(cfg.prompts)[: cfg.max_prompts], None


@torch.no_grad()
def run_validation(
    adapter: VideoModelAdapter,
    cfg: ValidationConfig,
    size: tuple[int, int, int],
    out_dir: Path,
    step: int,
    write: bool = True,
) -> dict[str, float]:
    """Sample the validation prompts at `size` (frames, height, width), score them where they carry scene specs, and
    (`write`) save the videos, a contact sheet and the metrics under `out_dir/validation/step_N`. Under sequence
    parallelism every rank of the SP group samples (the transformer's collectives need them all) and one writes."""
    from vidpost.media.video_io import contact_sheet, write_video

    prompts, specs = validation_prompts(cfg)
    if not prompts:
        return {}
    shift = cfg.shift if cfg.shift is not None else adapter.default_shift
    settings = GenerationSettings(*size, steps=cfg.steps, guidance=cfg.guidance_scale, shift=shift, fps=8)
    seeds = [video_seed(prompt_seed(None, cfg.seed, i), 0) for i in range(len(prompts))]
    was_training = adapter.transformer.training
    adapter.transformer.eval()
    _, videos, _ = next(sample_batches(adapter, prompts, seeds, settings, batch_size=len(prompts)))
    videos = videos.cpu()
    adapter.transformer.train(was_training)
    if not write:
        return {}
    folder = out_dir / "validation" / f"step_{step:07d}"
    metrics: dict[str, float] = {}
    labels = list(prompts)
    if specs is not None:
        from vidpost.evaluation.shapes import ATTRIBUTES, verify_rows

        results = verify_rows(videos, specs)
        for key in ("success", *ATTRIBUTES):
            metrics[f"verifier/{key}"] = float(sum(float(r[key]) for r in results) / len(results))
        labels = [f"{p}  [{'ok' if r['success'] else 'x'} {r['score']:.2f}]" for p, r in zip(prompts, results)]
    for i, v in enumerate(videos[:8]):
        write_video(folder / f"{i:02d}.mp4", v, fps=settings.fps)
    contact_sheet(list(videos), folder / "contact_sheet.png", labels=labels)
    write_text(folder / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
