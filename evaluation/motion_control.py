"""A positive control for text-conditioned motion: can a Wan transformer layout learn "moves to the right / up /
to the left / down" at all, and how fast?

    python -m vidpost.evaluation.motion_control [--patch 4] [--heads 4] [--layers 6] [--steps 1500]
        [--start inside|free] [--shift 3] [--every 150] [--contrast 0] [--margin 0.1] [--json]

The world is latents alone, no VAE: [4, 9, 16, 16] (the Shapes models' latent grid for a 17×64×64 clip), one
Gaussian blob (σ 1.5 cells) in channel 0 that moves one latent cell per latent frame (8 over the clip, like a fast
Shapes object) in one of four directions named by the caption ("a red circle moves to the right", …). `--start
inside` draws the start so the blob stays inside the grid, as the Shapes world does (so the start depends on the
direction); `free` draws it uniformly, independent of the direction. A `WanTransformer3DModel` with the given
patch, heads (head size 128 / heads) and depth, its text encoder a frozen random UMT5 as in the Shapes models, is
trained from scratch with the flow-matching loss (AdamW 3e-4, batch 32, logit-normal σ shifted by `--shift`,
captions dropped 10%), and every `--every` steps 32 samples (8 noises × 4 directions; 20 Euler steps, shift 3,
guidance 5) are read: the blob's track is the intensity-weighted centroid of channel 0, and a sample is correct
when its larger displacement component, first to last frame, points the asked way. Chance is 0.25; the same
reading of the training clips themselves is 0.97–1.0. Each evaluation also prints the loss gap between the
reversed and the true caption on 64 fresh clips noised to σ 0.6 and 0.9 (`direction_gaps`; what
`evaluation.text_use` measures on the real models). `--contrast W` adds W × a hinge that asks the true caption's
loss to be at least `--margin` (a share of it) below the loss with another direction's caption, on the same noisy
clip (a direct push to use the word).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
NAMES = list(DIRECTIONS)
GRID = (4, 9, 16, 16)


def captions() -> list[str]:
    return [f"a red circle moves {'to the ' if d in ('left', 'right') else ''}{d}" for d in NAMES]


def clips(directions: list[int], g: torch.Generator, start: str = "inside") -> torch.Tensor:
    """Latent clips [N, 4, 9, 16, 16] of a blob moving one cell per frame in `NAMES[d]` for each d."""
    n, (c, t, h, w) = len(directions), GRID
    v = torch.tensor([DIRECTIONS[NAMES[d]] for d in directions])
    if start == "inside":
        c0 = 3 + torch.rand(n, 2, generator=g) * 10 - v * (t - 1) / 2
    elif start == "free":
        c0 = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) - v * (t - 1) / 2
    else:
        raise ValueError(f"start must be 'inside' or 'free', not {start!r}")
    frames = torch.arange(float(t))
    cx = c0[:, 0, None] + v[:, 0, None] * frames
    cy = c0[:, 1, None] + v[:, 1, None] * frames
    yy, xx = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    blob = torch.exp(-((xx - cx[..., None, None]) ** 2 + (yy - cy[..., None, None]) ** 2) / (2 * 1.5**2))
    x = torch.full((n, c, t, h, w), -0.5)
    x[:, 0] = 3 * blob - 0.5
    return x


def read_directions(x: torch.Tensor, asked: list[int]) -> tuple[float, float]:
    """(share of clips whose blob moves the asked way, median displacement in cells) for latents [N, 4, 9, H, W]."""
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    weight = (x[:, 0] + 0.5).clamp(min=0) ** 2 + 1e-6
    cx = (weight * xx).sum((-1, -2)) / weight.sum((-1, -2))
    cy = (weight * yy).sum((-1, -2)) / weight.sum((-1, -2))
    dx, dy = cx[:, -1] - cx[:, 0], cy[:, -1] - cy[:, 0]
    correct = 0
    for i, d in enumerate(asked):
        ux, uy = DIRECTIONS[NAMES[d]]
        correct += bool(dx[i] * ux > 0) if abs(dx[i]) > abs(dy[i]) else bool(dy[i] * uy > 0)
    return correct / len(asked), float(torch.hypot(dx, dy).median())


@torch.no_grad()
def sample(adapter: Any, embeds: torch.Tensor, asked: list[int], seed: int = 123) -> torch.Tensor:
    """The project's sampler (`models.sampling.denoise`: 20 Euler steps, shift 3, guidance 5) for the captions
    `asked` from the noise of `seed`."""
    from vidpost.models.base import PromptEmbeds
    from vidpost.models.sampling import denoise, flow_sigmas

    n = len(asked)
    x = torch.randn((n, *GRID), generator=torch.Generator().manual_seed(seed))
    cond, uncond = PromptEmbeds(embeds=embeds[asked]), PromptEmbeds(embeds=embeds[[len(NAMES)] * n])
    return denoise(adapter, x, flow_sigmas(20, 3.0), cond, uncond, 5.0)


REVERSED = [NAMES.index(n) for n in ("left", "right", "down", "up")]


def direction_gaps(adapter: Any, sigmas=(0.6, 0.9), seed: int = 7) -> dict[str, float]:
    """{"gap_<σ>": mean relative loss gap (reversed caption − true) / true} on 64 fresh clips noised to each σ: how
    much the prediction uses the direction word there (`evaluation.text_use`, as on the real models)."""
    from vidpost.evaluation.text_use import text_use

    d = [i % len(NAMES) for i in range(64)]
    names = captions()
    x0 = clips(d, torch.Generator().manual_seed(seed))
    rows = text_use(adapter, x0, [names[i] for i in d], [names[REVERSED[i]] for i in d], sigmas=sigmas, seed=seed)
    return {f"gap_{r['sigma']}": r["gap"] for r in rows}


def clip_losses(adapter: Any, model: torch.nn.Module, xt, sigma, cond: Any, target: torch.Tensor) -> torch.Tensor:
    """Per-clip flow-matching loss [B] of `model`'s velocity at (xt, σ) under `cond`."""
    return (adapter.predict_velocity(xt, sigma, cond, model=model) - target).pow(2).flatten(1).mean(1)


def run(
    *,
    patch: int = 4,
    heads: int = 4,
    layers: int = 6,
    steps: int = 1500,
    start: str = "inside",
    shift: float = 3.0,
    every: int = 150,
    seed: int = 0,
    contrast: float = 0.0,
    margin: float = 0.1,
    log=print,
) -> list[dict[str, float]]:
    """Train one layout (module doc) → one row per evaluation: step, loss (running mean), accuracy, displacement."""
    from vidpost.models import WanAdapter
    from vidpost.models.base import PromptEmbeds
    from vidpost.models.sampling import shift_sigmas
    from vidpost.pipelines.shapes_models import shapes_vocabulary

    torch.manual_seed(seed)
    adapter = WanAdapter.tiny(
        seed,
        words=shapes_vocabulary(),
        rope_max_seq_len=64,
        patch_size=(1, patch, patch),
        num_layers=layers,
        num_heads=heads,
        head_dim=128 // heads,
        ffn_dim=512,
        text_dim=64,
        max_sequence_length=32,
        latent_channels=GRID[0],
    )
    model = adapter.transformer.requires_grad_(True).train()
    with torch.no_grad():
        embeds = adapter.encode_prompt([*captions(), ""]).embeds
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    asked = [i % len(NAMES) for i in range(32)]
    rows, running, t0 = [], 0.0, time.perf_counter()
    for step in range(1, steps + 1):
        d = torch.randint(0, len(NAMES), (32,), generator=g)
        x0 = clips(d.tolist(), g, start)
        sigma = shift_sigmas(torch.sigmoid(torch.randn(32, generator=g)), shift)
        text = torch.where(torch.rand(32, generator=g) < 0.1, len(NAMES), d)
        eps = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt, target = (1 - s) * x0 + s * eps, eps - x0
        per_clip = clip_losses(adapter, model, xt, sigma, PromptEmbeds(embeds=embeds[text]), target)
        loss = per_clip.mean()
        if contrast > 0:  # the true caption must beat another direction's by `margin` of the loss
            other = (d + torch.randint(1, len(NAMES), (32,), generator=g)) % len(NAMES)
            per_wrong = clip_losses(adapter, model, xt, sigma, PromptEmbeds(embeds=embeds[other]), target)
            hinge = torch.relu(margin * per_clip.detach() - (per_wrong - per_clip))
            (loss + contrast * (hinge * (text != len(NAMES))).mean()).backward()
        else:
            loss.backward()
        opt.step()
        opt.zero_grad()
        running = 0.98 * running + 0.02 * loss.item()
        if step % every == 0 or step == steps:
            model.eval()
            accuracy, moved = read_directions(sample(adapter, embeds, asked), asked)
            row = {"step": step, "loss": running / (1 - 0.98**step), "accuracy": accuracy, "displacement": moved}
            row.update(direction_gaps(adapter))
            model.train()
            rows.append(row)
            log(
                f"patch {patch} heads {heads} layers {layers} start {start} shift {shift} contrast {contrast}: step {step} loss "
                f"{row['loss']:.4f} direction {accuracy:.2f} (chance 0.25) moved {moved:.1f} cells, reversed-caption "
                f"loss gap {row['gap_0.6']:+.1%} at sigma 0.6, {row['gap_0.9']:+.1%} at 0.9 "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vidpost.evaluation.motion_control", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--patch", type=int, choices=[1, 2, 4], default=4)
    p.add_argument("--heads", type=int, choices=[1, 2, 4, 8], default=4)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--start", choices=["inside", "free"], default="inside")
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--every", type=int, default=150)
    p.add_argument("--contrast", type=float, default=0.0, help="weight of the caption-contrast hinge (0: off)")
    p.add_argument("--margin", type=float, default=0.1, help="the hinge's margin, a share of the true loss")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        p.error("--steps and --every must be ≥ 1")
    rows = run(
        patch=args.patch,
        heads=args.heads,
        layers=args.layers,
        steps=args.steps,
        start=args.start,
        shift=args.shift,
        every=args.every,
        contrast=args.contrast,
        margin=args.margin,
        log=(lambda s: None) if args.json else print,
    )
    if args.json:
        print(json.dumps({**vars(args), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
