"""The one seeding rule of generation: which initial noise each video is sampled from.

Video k of prompt i is sampled from the Gaussian noise of seed `video_seed(base, k)` = base + k·SEED_STRIDE, where
base is the prompt's own seed when it has one (a seed of 0 is kept) and otherwise the command's `--seed` + i. The
noise is drawn per video (`vidpost.models.sampling.initial_noise`), so a video does not depend on its batch, on
the other prompts, or on the model it is sampled with.
"""

from __future__ import annotations

SEED_STRIDE = 100_003  # seed of video k of a prompt = base seed + k·SEED_STRIDE


def prompt_seed(own: int | None, base_seed: int | None, index: int) -> int | None:
    """The base seed of prompt `index`: its own seed when given, else `base_seed` + index (None when both are
    None: videos scored from files, whose seed is unknown)."""
    if own is not None:
        return own
    return None if base_seed is None else base_seed + index


def video_seed(base: int | None, k: int) -> int | None:
    """The seed of video k of a prompt whose base seed is `base`."""
    return None if base is None else base + k * SEED_STRIDE
