"""The pieces of the rewriter's GRPO (`vidpost enhance train grpo`; the algorithm is `pipelines/enhance_grpo.py`'s
docstring): what an iteration draws as a function of (seed, iteration), the videos the frozen video model renders
from the rewrites (one shared noise per prompt's group), and the reward of a rewrite (the video rewards against
what the user asked for, intent preservation, the length and fallback penalties). Config arguments are the stage's
sections."""

from __future__ import annotations

from typing import Any

import torch

from vidpost.seeding import step_generator, step_seed


def choose_rows(rows: list[dict], n: int, seed: int, step: int) -> list[dict]:
    g = step_generator(seed, step, 0, 0)
    if n <= len(rows):
        idx = torch.randperm(len(rows), generator=g)[:n]
    else:  # small pool: with replacement
        idx = torch.randint(len(rows), (n,), generator=g)
    return [rows[i] for i in idx.tolist()]


@torch.no_grad()
def render_videos(adapter, prompts: list[str], k: int, cfg: Any, size, shift: float, seed: int, step: int):
    """One video per prompt (prompt-major groups of k), one initial noise per group → [N, 3, T, H, W] on the CPU."""
    from vidpost.models.sampling import initial_noise, sample

    one = adapter.latent_shape(1, *size)
    noise = torch.cat(
        [initial_noise(one, seed=step_seed(seed, step, g, 2)).repeat(k, 1, 1, 1, 1) for g in range(len(prompts) // k)]
    )
    videos = []
    for i in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[i : i + cfg.batch_size]
        videos.append(
            sample(
                adapter,
                chunk,
                num_frames=size[0],
                height=size[1],
                width=size[2],
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                shift=shift,
                seed=0,
                latents=noise[i : i + len(chunk)].to(adapter.device),
            ).cpu()
        )
    return torch.cat(videos)


def score_rewrites(
    cfg: Any, video_reward, encoder, videos, users, reward_prompts, samples, max_words: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total reward [N] and its named components (see the module docstring, step 4)."""
    from vidpost.enhance.train import count_words, length_penalty
    from vidpost.enhance.validate import check

    texts = [s.text for s in samples]
    fallback = torch.tensor(
        [float(check(u, s.text, finished=s.finished, max_words=max_words) is not None) for u, s in zip(users, samples)]
    )
    out = video_reward(videos, reward_prompts)
    parts = {"video": out.score, **out.components}
    total = out.score.clone()
    if cfg.intent_weight:
        parts["intent"] = encoder.similarity(users, [t or "." for t in texts])
        total += cfg.intent_weight * parts["intent"]
    parts["length_penalty"] = length_penalty(texts, cfg.length_budget)
    total -= cfg.length_weight * parts["length_penalty"]
    parts["fallback"] = fallback
    total -= cfg.fallback_penalty * fallback
    parts["words"] = count_words(texts)
    return total, parts
