"""Fixed, versioned train / held-out splits of the Shapes world.

Rule (version "v1"). A scene is *held out* when the SHA-256 of "v1:" + its canonical caption, read as a big-endian
integer, is ≡ 0 (mod 16) — so 1/16 of all captions, whatever their render seed, are never trained on, and the
held-out set measures generalisation to unseen attribute combinations, not memorised clips. Render seeds are
disjoint too: train clips use seeds in [0, 2³⁰), held-out clips 2³⁰ + i.

- `heldout_prompts("v1")`: 64 items (40 one-object scenes, then 24 two-object scenes), drawn with
  `random_scene` from `numpy.random.default_rng(HELDOUT_STREAM)` keeping only held-out scenes with new captions;
  item i is `{"id": "heldout-v1-{i:03d}", "caption", "prompt_user", "spec", "seed": 2³⁰ + i}` where
  `prompt_user = paraphrase(spec, default_rng([HELDOUT_STREAM, i]))` and `spec` is `SceneSpec.to_dict()`.
  The same list is committed as `heldout_v1.json` (`write_heldout_json` regenerates it; a test checks they agree).
- `train_specs(n, "v1", seed=0)`: item i draws from `default_rng([TRAIN_STREAM, seed, i])`: scenes from
  `random_scene` until one is not held out, then its render seed in [0, 2³⁰), its user-style paraphrase and its
  noisy web caption (`noisy_caption`). Each item depends only on (seed, i), so `train_specs(n)` is a prefix of
  `train_specs(n + k)`. Items: `{"id": "train-v1-s{seed}-{i:06d}", "caption", "prompt_user", "caption_noisy",
  "spec", "seed"}`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from vidpost.outputs import write_text

from .captions import caption, noisy_caption, paraphrase
from .world import SceneSpec, random_scene, render

__all__ = [
    "HELDOUT_SEED_BASE",
    "VERSIONS",
    "heldout_json_path",
    "heldout_prompts",
    "is_heldout",
    "train_specs",
    "write_heldout_json",
]

VERSIONS = ("v1",)
HELDOUT_SEED_BASE = 2**30
HELDOUT_STREAM = 0x5EED_4E1D
TRAIN_STREAM = 0x7EA1_0001
_HELDOUT_MODULUS = 16
_HELDOUT_ONE, _HELDOUT_TWO = 40, 24


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise ValueError(f"unknown split version {version!r}; expected one of {list(VERSIONS)}")


def is_heldout(spec: SceneSpec | str, version: str = "v1") -> bool:
    """Whether a scene (or its canonical caption) belongs to the held-out split of `version`."""
    _check_version(version)
    text = spec if isinstance(spec, str) else caption(spec)
    digest = hashlib.sha256(f"{version}:{text}".encode()).digest()
    return int.from_bytes(digest, "big") % _HELDOUT_MODULUS == 0


def heldout_prompts(version: str = "v1") -> list[dict[str, Any]]:
    """The fixed held-out prompt set (see the module doc)."""
    _check_version(version)
    rng = np.random.default_rng(HELDOUT_STREAM)
    specs: list[SceneSpec] = []
    seen: set[str] = set()
    for num_objects, count in ((1, _HELDOUT_ONE), (2, _HELDOUT_TWO)):
        taken = 0
        while taken < count:
            spec = random_scene(rng, num_objects=num_objects)
            text = caption(spec)
            if text in seen or not is_heldout(text, version):
                continue
            seen.add(text)
            specs.append(spec)
            taken += 1
    return [
        {
            "id": f"heldout-{version}-{i:03d}",
            "caption": caption(spec),
            "prompt_user": paraphrase(spec, np.random.default_rng([HELDOUT_STREAM, i])),
            "spec": spec.to_dict(),
            "seed": HELDOUT_SEED_BASE + i,
        }
        for i, spec in enumerate(specs)
    ]


def train_specs(n: int, version: str = "v1", *, seed: int = 0) -> list[dict[str, Any]]:
    """The first `n` items of the training stream `seed` (see the module doc)."""
    _check_version(version)
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be >= 0, got n={n}, seed={seed}")
    items = []
    for i in range(n):
        rng = np.random.default_rng([TRAIN_STREAM, seed, i])
        spec = random_scene(rng)
        while is_heldout(spec, version):
            spec = random_scene(rng)
        render_seed = int(rng.integers(HELDOUT_SEED_BASE))
        items.append(
            {
                "id": f"train-{version}-s{seed}-{i:06d}",
                "caption": caption(spec),
                "prompt_user": paraphrase(spec, rng),
                "caption_noisy": noisy_caption(spec, rng),
                "spec": spec.to_dict(),
                "seed": render_seed,
            }
        )
    return items


def heldout_json_path(version: str = "v1") -> Path:
    """Where the committed held-out set of `version` lives (next to this module)."""
    _check_version(version)
    return Path(__file__).with_name(f"heldout_{version}.json")


def write_heldout_json(version: str = "v1", path: str | Path | None = None) -> Path:
    """Write `heldout_prompts(version)` as a JSON array, one item per line (to the committed file by default);
    returns the path."""
    out = Path(path) if path is not None else heldout_json_path(version)
    lines = ",\n".join(json.dumps(item, ensure_ascii=False) for item in heldout_prompts(version))
    write_text(out, f"[\n{lines}\n]\n")
    return out


def render_heldout(
    items: list[dict[str, Any]], *, num_frames: int = 17, height: int = 64, width: int = 64
) -> tuple[list[SceneSpec], np.ndarray]:
    """The scenes of held-out `items` (`heldout_prompts`) and their clips [N, 3, T, H, W] in [0, 1], each rendered
    with its own seed."""
    specs = [SceneSpec.from_dict(it["spec"]) for it in items]
    kw = {"num_frames": num_frames, "height": height, "width": width}
    return specs, np.stack([render(s, seed=it["seed"], **kw) for s, it in zip(specs, items)])
