"""The one seeding module: every random draw of a training step, and the initial noise of every generated video.

Training. Everything a step draws (its data order, noise levels, noise, prompts, trained steps) comes from
`step_generator(seed, step, *where)`: a CPU generator seeded by a 64-bit hash of (seed, step, where...), `where`
naming the draw (a micro-batch, a process, a sample, a stream), never from the global RNG. So a resumed run draws
what an uninterrupted one does, N processes draw for the same global batch what one process does, and two draws
are independent whenever their coordinates differ (no arithmetic seed formula whose ranges could overlap).

Generation. Which initial noise each video is sampled from:

Video k of prompt i is sampled from the Gaussian noise of seed `video_seed(base, k)` = base + k·SEED_STRIDE, where
base is the prompt's own seed when it has one (a seed of 0 is kept) and otherwise the command's `--seed` + i. The
noise is drawn per video (`vidpost.models.sampling.initial_noise`), so a video does not depend on its batch, on
the other prompts, or on the model it is sampled with.
"""

from __future__ import annotations

import hashlib
import struct

import torch

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


def step_seed(seed: int, step: int, *where: int) -> int:
    """The seed of the draw `where` of training step `step` of a run with seed `seed` (module docstring)."""
    data = struct.pack(f"<{2 + len(where)}q", seed, step, *where)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def step_generator(seed: int, step: int, *where: int) -> torch.Generator:
    """A CPU generator seeded by `step_seed(seed, step, *where)`."""
    return torch.Generator().manual_seed(step_seed(seed, step, *where))


DATA_ORDER = -1
"""the `where` of an epoch's shuffle of the training data (step draws use non-negative coordinates)"""


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of the data order of epoch `epoch` (a run's shuffles of its examples)."""
    return step_generator(seed, epoch, DATA_ORDER)
