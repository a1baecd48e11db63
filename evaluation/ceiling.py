"""The Shapes ruler's ceiling: how much of the held-out ground truth the verifier accepts, raw and after the model's
VAE round trip, and how often it accepts a clip that contradicts its caption.

    vidpost shapes ceiling [--model shapes] [--mutations 3] [--json]

On the held-out clips (`shapes.splits.heldout_prompts`, rendered at the model's generation size with their seeds):
(a) `ground_truth_success`: the verifier's success on the rendered clips;
(b) `reconstruction_success`: on the model's VAE reconstructions of them (encode → posterior mean → decode) — no
    generator built on that VAE can be expected to do better, so (b) caps every success figure measured with it;
(c) false success: each clip's scene is changed in `mutations` attributes its caption states, one at a time
    (`shapes.world.mutate`, kinds drawn without repetition from a generator seeded by the clip's index), the
    changed scene rendered with the same seed, and checked against the original caption — on the rendered clips
    and on their reconstructions. `false_success` is the larger of the two rates (the guard against a verifier
    that accepts blobs).
`per_attribute` holds each attribute's accuracy on both (a) and (b). `--model` takes a model folder or preset, or a
VAE folder (an `AutoencoderKLWan` config), to measure a VAE while it trains.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_SIZE = (17, 64, 64)


def load_vae(model: str) -> tuple[torch.nn.Module, Path, tuple[int, int, int]]:
    """(VAE, its folder, the generation size (frames, height, width) of the model it belongs to)."""
    from diffusers import AutoencoderKLWan

    from vidpost.models import resolve_model_path
    from vidpost.models.base import read_vidpost_config

    path = Path(model)
    config = path / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("_class_name", "").startswith("Autoencoder"):
        vae_dir, size = path, DEFAULT_SIZE
    else:
        model_dir = resolve_model_path(model)
        vae_dir = model_dir / "vae"
        gen = read_vidpost_config(model_dir).get("generation", {})
        size = (gen.get("num_frames", 17), gen.get("height", 64), gen.get("width", 64))
    return AutoencoderKLWan.from_pretrained(vae_dir).eval(), vae_dir, size


@torch.no_grad()
def reconstruct(vae: torch.nn.Module, clips: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """VAE round trip of clips [N, 3, T, H, W] in [0, 1] (posterior mean) → the same shape, in [0, 1]."""
    out = []
    for i in range(0, len(clips), batch_size):
        x = torch.from_numpy(clips[i : i + batch_size]).float() * 2 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        out.append(((rec.clamp(-1, 1) + 1) / 2).numpy())
    return np.concatenate(out)


def _mutations(spec: Any, index: int, k: int) -> list[tuple[str, Any]]:
    from vidpost.shapes.world import applicable_mutations, mutate

    rng = np.random.default_rng([7, index])
    kinds = applicable_mutations(spec)
    chosen = rng.choice(kinds, size=min(k, len(kinds)), replace=False)
    return [(str(kind), mutate(spec, rng, str(kind))) for kind in chosen]


def shapes_ceiling(model: str = "shapes", mutations: int = 3, limit: int | None = None) -> dict[str, Any]:
    """(a), (b), (c) of the module doc on the held-out clips (the first `limit` of them)."""
    from vidpost.shapes.splits import heldout_prompts, render_heldout
    from vidpost.shapes.verifier import ATTRIBUTES, verify_batch
    from vidpost.shapes.world import render

    t0 = time.perf_counter()
    vae, vae_dir, (frames, height, width) = load_vae(model)
    items = heldout_prompts()[:limit] if limit else heldout_prompts()
    kw = {"num_frames": frames, "height": height, "width": width}
    specs, truth = render_heldout(items, **kw)
    fakes, fake_of, kinds = [], [], []
    for i, (spec, it) in enumerate(zip(specs, items)):
        for kind, other in _mutations(spec, i, mutations):
            fakes.append(render(other, seed=it["seed"], **kw))
            fake_of.append(i)
            kinds.append(kind)
    fake_clips = np.stack(fakes)
    fake_specs = [specs[i] for i in fake_of]

    gt = verify_batch(truth, specs)
    rec = verify_batch(reconstruct(vae, truth), specs)
    gt_fake = verify_batch(fake_clips, fake_specs)["success"]
    rec_fake = verify_batch(reconstruct(vae, fake_clips), fake_specs)["success"]
    by_kind = {
        k: {
            "n": int(sum(x == k for x in kinds)),
            "ground_truth": float(np.mean([s for s, x in zip(gt_fake, kinds) if x == k])),
            "reconstruction": float(np.mean([s for s, x in zip(rec_fake, kinds) if x == k])),
        }
        for k in sorted(set(kinds))
    }
    return {
        "model": str(model),
        "vae": str(vae_dir),
        "size": [frames, height, width],
        "n_clips": len(items),
        "n_mutations": len(fakes),
        "ground_truth_success": float(gt["success"].mean()),
        "reconstruction_success": float(rec["success"].mean()),
        "false_success": float(max(gt_fake.mean(), rec_fake.mean())),
        "false_success_ground_truth": float(gt_fake.mean()),
        "false_success_reconstruction": float(rec_fake.mean()),
        "false_success_by_mutation": by_kind,
        "per_attribute": {
            a: {"ground_truth": float(gt[f"{a}_ok"].mean()), "reconstruction": float(rec[f"{a}_ok"].mean())}
            for a in ATTRIBUTES
        },
        "graded": {"ground_truth": float(gt["score"].mean()), "reconstruction": float(rec["score"].mean())},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def ceiling_table(r: dict[str, Any]) -> str:
    """The ceiling as a plain-text table."""
    f, h, w = r["size"]
    lines = [
        f"Shapes ruler on {r['n_clips']} held-out clips ({f}x{h}x{w}); VAE {r['vae']}",
        f"{'':30s}{'ground truth':>14s}{'VAE recon':>12s}",
        f"{'success':30s}{r['ground_truth_success']:14.3f}{r['reconstruction_success']:12.3f}",
        f"{'graded score':30s}{r['graded']['ground_truth']:14.3f}{r['graded']['reconstruction']:12.3f}",
    ]
    for a, v in r["per_attribute"].items():
        lines.append(f"{'  ' + a:30s}{v['ground_truth']:14.3f}{v['reconstruction']:12.3f}")
    fs_gt, fs_rec = r["false_success_ground_truth"], r["false_success_reconstruction"]
    lines.append(f"{'false success (' + str(r['n_mutations']) + ' mutations)':30s}{fs_gt:14.3f}{fs_rec:12.3f}")
    for kind, v in r["false_success_by_mutation"].items():
        label = f"  {kind} ({v['n']})"
        lines.append(f"{label:30s}{v['ground_truth']:14.3f}{v['reconstruction']:12.3f}")
    lines.append(f"({r['seconds']} s)")
    return "\n".join(lines)
