"""Generating videos for (prompts, seeds, settings): the one sampling loop every command uses.

`sample_batches` samples prompts in batches, each video from its own seed's noise (`vidpost.seeding` holds the
rule that picks the seeds); `load_model` loads a model (+ LoRA, attention and inference settings);
`generate_videos` samples an evaluation's records and writes `<videos_dir>/<id>.mp4`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vidpost.evaluation.settings import GenerationSettings, resolve_settings
from vidpost.media.video_io import write_video


def default_dtype(device: str) -> torch.dtype:
    """bfloat16 on a GPU, float32 elsewhere."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


@torch.no_grad()
def sample_batches(
    adapter: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: GenerationSettings,
    *,
    batch_size: int,
    progress: bool = False,
    step_progress: bool = False,
) -> Iterator[tuple[int, torch.Tensor, float]]:
    """Sample `prompts[i]` from the noise of `seeds[i]`, `batch_size` at a time → (start index, videos [B, C, T, H,
    W] float in [0, 1], seconds the sampler took) per batch. `progress`: a bar over batches; `step_progress`: the
    sampler's bar over steps."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    from vidpost.models.sampling import initial_noise, sample

    shape = adapter.latent_shape(1, settings.num_frames, settings.height, settings.width)
    size = (settings.num_frames, settings.height, settings.width)
    adapter.check_memory(min(batch_size, len(prompts)), *size, guidance=adapter.uses_cfg(settings.guidance))
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress):
        chunk = list(prompts[start : start + batch_size])
        noise = torch.cat(
            [initial_noise(shape, seed=s, device=adapter.device) for s in seeds[start : start + batch_size]]
        )
        t0 = time.perf_counter()
        out = sample(
            adapter,
            chunk,
            **settings.sample_kwargs(),
            seed=0,
            negative_prompt=settings.negative_prompt,
            latents=noise,
            progress=step_progress,
        )
        yield start, out, time.perf_counter() - t0


def generate_videos(
    model: str,
    records: list[dict[str, Any]],
    videos_dir: Path,
    *,
    lora: str | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    progress: bool = True,
    **user: Any,
) -> dict[str, Any]:
    """Sample every record's video (prompt, seed) and write `<videos_dir>/<id>.mp4` (setting `record["video"]`);
    `user` holds the generation settings given (`resolve_settings`' keywords; None: the model's default).
    Returns the generation settings and timings."""
    from vidpost.models import load, resolve_model_path

    model_dir = resolve_model_path(model)
    dtype = dtype or default_dtype(device)
    t0 = time.time()
    adapter = load(model_dir, dtype=dtype, device=device, lora=lora)
    settings = resolve_settings(model_dir, adapter, **user)
    load_s = time.time() - t0
    videos_dir.mkdir(parents=True, exist_ok=True)
    t1 = time.time()
    prompts, seeds = [r["prompt"] for r in records], [r["seed"] for r in records]
    for start, out, _ in sample_batches(adapter, prompts, seeds, settings, batch_size=batch_size, progress=progress):
        for rec, video in zip(records[start : start + batch_size], out.float().cpu()):
            rec["video"] = str(write_video(videos_dir / f"{rec['id']}.mp4", video, fps=settings.fps))
    info = {
        "model": str(model),
        "model_dir": str(model_dir),
        "lora": None if lora is None else str(lora),
        "family": adapter.family,
        **settings.record(),
        "negative_prompt": settings.negative_prompt,
        "batch_size": batch_size,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "load_seconds": round(load_s, 2),
        "seconds_per_video": round((time.time() - t1) / max(1, len(records)), 3),
    }
    del adapter
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return info
