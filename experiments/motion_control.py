"""A positive control for text-conditioned motion: can a Wan transformer layout learn "moves to the right / up /
to the left / down" at all, and how fast?

    python experiments/motion_control.py [--patch 4] [--heads 4] [--layers 6] [--steps 1500]
        [--start inside|free] [--shift 3] [--every 150] [--contrast 0] [--margin 0.1] [--anchor]
        [--given-share 0.5 [--given-frame 4]] [--json]

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
`experiments/text_use.py` measures on the real models). `--contrast W` adds W × a hinge that asks the true caption's
loss to be at least `--margin` (a share of it) below the loss with another direction's caption, on the same noisy
clip (a direct push to use the word). `--anchor` puts fixed x, y and frame ramps in channels 1–3 (an absolute
position to read). `--given-share S` trains a share S of the clips with latent frame `--given-frame` (default 0, the
first) given clean at timestep 0 (`train.given_frame_share`) and also reads the direction of samples around that
frame taken from a true clip (`given`) and of the keyframe sampler (`sample(keyframe=…)`: the plain sample's frame,
then the clip around it).
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from vidpost.config import ArgumentParser

DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
NAMES = list(DIRECTIONS)
GRID = (4, 9, 16, 16)


def captions() -> list[str]:
    return [f"a red circle moves {'to the ' if d in ('left', 'right') else ''}{d}" for d in NAMES]


def clips(directions: list[int], g: torch.Generator, start: str = "inside", anchor: bool = False) -> torch.Tensor:
    """Latent clips [N, 4, 9, 16, 16] of a blob moving one cell per frame in `NAMES[d]` for each d; with `anchor`,
    channels 1–3 carry fixed x, y and frame ramps (an absolute position the transformer can read)."""
    v = torch.tensor([DIRECTIONS[NAMES[d]] for d in directions])
    return render(starts(torch.rand(len(directions), 2, generator=g), v, start), v, anchor)


def starts(u: torch.Tensor, v: torch.Tensor, start: str) -> torch.Tensor:
    """Blob centres at the first frame [N, 2] (x, y) for uniform draws `u` [N, 2] and velocities `v` [N, 2]."""
    t, h, w = GRID[1:]
    if start == "inside":
        return 3 + u * 10 - v * (t - 1) / 2
    if start == "free":
        return u * torch.tensor([w, h]) - v * (t - 1) / 2
    raise ValueError(f"start must be 'inside' or 'free', not {start!r}")


def render(c0: torch.Tensor, v: torch.Tensor, anchor: bool = False) -> torch.Tensor:
    """Latent clips [N, 4, 9, 16, 16] of blobs starting at `c0` [N, 2] moving `v` [N, 2] cells per frame."""
    n, (c, t, h, w) = len(c0), GRID
    frames = torch.arange(float(t))
    cx = c0[:, 0, None] + v[:, 0, None] * frames
    cy = c0[:, 1, None] + v[:, 1, None] * frames
    yy, xx = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    blob = torch.exp(-((xx - cx[..., None, None]) ** 2 + (yy - cy[..., None, None]) ** 2) / (2 * 1.5**2))
    x = torch.full((n, c, t, h, w), -0.5)
    x[:, 0] = 3 * blob - 0.5
    if anchor:
        tt = torch.arange(float(t))[:, None, None].expand(t, h, w)
        for k, ramp in enumerate((xx.expand(t, h, w) / (w - 1), yy.expand(t, h, w) / (h - 1), tt / (t - 1)), 1):
            x[:, k] = ramp - 0.5
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
def sample(
    adapter: Any,
    embeds: torch.Tensor,
    asked: list[int],
    seed: int = 123,
    given: torch.Tensor | None = None,
    index: int = 0,
) -> torch.Tensor:
    """The project's sampler (`models.sampling.denoise`: 20 Euler steps, shift 3, guidance 5) for the captions
    `asked` from the noise of `seed`, around the clean latent frame `given` ([N, 4, 1, 16, 16]) at `index` if any."""
    from vidpost.models.base import PromptEmbeds
    from vidpost.models.sampling import denoise, flow_sigmas

    n = len(asked)
    x = torch.randn((n, *GRID), generator=torch.Generator().manual_seed(seed))
    cond, uncond = PromptEmbeds(embeds=embeds[asked]), PromptEmbeds(embeds=embeds[[len(NAMES)] * n])
    return denoise(adapter, x, flow_sigmas(20, 3.0), cond, uncond, 5.0, given_frame=given, given_index=index)


REVERSED = [NAMES.index(n) for n in ("left", "right", "down", "up")]


def bayes_losses(sigmas=(0.8, 0.9, 0.95), n: int = 32, seed: int = 5, start: str = "inside", anchor: bool = False):
    """(clips, noise, {σ: (loss knowing the caption, loss ignoring it)}) of the Bayes-optimal denoiser of this
    world: the posterior mean of the clip over the four directions × a 41×41 grid of start points, on `n` fresh
    clips (directions in turn) noised to each σ, as a flow-matching loss (v error = x0 error / σ). The floor a
    trained model's loss on the same clips (`model_losses`) is read against."""
    u = torch.stack(torch.meshgrid(torch.linspace(0, 1, 41), torch.linspace(0, 1, 41), indexing="ij"), -1)
    u = u.reshape(-1, 2)
    bank = []
    for name in NAMES:
        v = torch.tensor(DIRECTIONS[name]).expand(len(u), 2)
        bank.append(render(starts(u, v, start), v, anchor).flatten(1))
    g = torch.Generator().manual_seed(seed)
    d = [i % len(NAMES) for i in range(n)]
    x0 = clips(d, g, start, anchor)
    eps = torch.randn(x0.shape, generator=g)
    every = torch.cat(bank)

    def loss(xt: torch.Tensor, cands: torch.Tensor, target: torch.Tensor, sigma: float) -> float:
        w = torch.softmax(-((xt - (1 - sigma) * cands) ** 2).sum(1) / (2 * sigma**2), 0)
        return float(((w @ cands - target) ** 2).mean()) / sigma**2

    out = {}
    for sigma in sigmas:
        xt = ((1 - sigma) * x0 + sigma * eps).flatten(1)
        knowing = sum(loss(xt[i], bank[d[i]], x0[i].flatten(), sigma) for i in range(n)) / n
        blind = sum(loss(xt[i], every, x0[i].flatten(), sigma) for i in range(n)) / n
        out[sigma] = (knowing, blind)
    return x0, eps, out


@torch.no_grad()
def model_losses(adapter: Any, embeds: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, sigmas) -> dict:
    """{σ: the model's flow-matching loss with the true captions} on `bayes_losses`' clips and noise."""
    from vidpost.models.base import PromptEmbeds

    d = [i % len(NAMES) for i in range(len(x0))]
    out = {}
    for sigma in sigmas:
        xt, s = (1 - sigma) * x0 + sigma * eps, torch.full((len(x0),), sigma)
        out[sigma] = float(
            clip_losses(adapter, adapter.transformer, xt, s, PromptEmbeds(embeds=embeds[d]), eps - x0).mean()
        )
    return out


def direction_gaps(adapter: Any, sigmas=(0.6, 0.9), seed: int = 7, anchor: bool = False) -> dict[str, float]:
    """{"gap_<σ>": mean relative loss gap (reversed caption − true) / true} on 64 fresh clips noised to each σ: how
    much the prediction uses the direction word there (`experiments/text_use.py`, as on the real models)."""
    from text_use import text_use  # experiments/text_use.py, beside this file

    d = [i % len(NAMES) for i in range(64)]
    names = captions()
    x0 = clips(d, torch.Generator().manual_seed(seed), anchor=anchor)
    rows = text_use(adapter, x0, [names[i] for i in d], [names[REVERSED[i]] for i in d], sigmas=sigmas, seed=seed)
    return {f"gap_{r['sigma']}": r["gap"] for r in rows}


def clip_losses(
    adapter: Any, model: torch.nn.Module, xt, sigma, cond: Any, target: torch.Tensor, keyed: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-clip flow-matching loss [B] of `model`'s velocity at (xt, σ) under `cond`; `keyed` [B, T] marks given
    latent frames (timestep 0, out of the loss)."""
    from vidpost.training.flow import flow_matching_loss

    pred = adapter.predict_velocity(xt, sigma, cond, model=model, given=keyed)
    return flow_matching_loss(pred, torch.zeros_like(target), target, torch.ones(len(xt)), given=keyed)


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
    anchor: bool = False,
    given_share: float = 0.0,
    given_frame: int = 0,
    bayes_clips: int = 32,
    log=print,
) -> list[dict[str, float]]:
    """Train one layout (module doc) → one row per evaluation: step, loss (running mean), accuracy, displacement."""
    from vidpost.models import WanAdapter
    from vidpost.models.base import PromptEmbeds
    from vidpost.models.sampling import frame_slice, shift_sigmas
    from vidpost.pipelines.sft import TrainConfig
    from vidpost.pipelines.shapes_models import shapes_vocabulary
    from vidpost.training.flow import given_frames

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
    bx0, beps, bayes = bayes_losses(n=bayes_clips, start=start, anchor=anchor)
    rows, running, t0 = [], 0.0, time.perf_counter()
    for step in range(1, steps + 1):
        d = torch.randint(0, len(NAMES), (32,), generator=g)
        x0 = clips(d.tolist(), g, start, anchor)
        sigma = shift_sigmas(torch.sigmoid(torch.randn(32, generator=g)), shift)
        text = torch.where(torch.rand(32, generator=g) < 0.1, len(NAMES), d)
        eps = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt, target = (1 - s) * x0 + s * eps, eps - x0
        keyed = given_frames(g, 32, GRID[1], TrainConfig(given_frame_share=given_share, given_frame=given_frame))
        if keyed is not None:
            xt = torch.where(keyed[:, None, :, None, None], x0, xt)
        per_clip = clip_losses(adapter, model, xt, sigma, PromptEmbeds(embeds=embeds[text]), target, keyed)
        loss = per_clip.mean()
        if contrast > 0:  # the true caption must beat another direction's by `margin` of the loss
            other = (d + torch.randint(1, len(NAMES), (32,), generator=g)) % len(NAMES)
            per_wrong = clip_losses(adapter, model, xt, sigma, PromptEmbeds(embeds=embeds[other]), target, keyed)
            hinge = torch.relu(margin * per_clip.detach() - (per_wrong - per_clip))
            (loss + contrast * (hinge * (text != len(NAMES))).mean()).backward()
        else:
            loss.backward()
        opt.step()
        opt.zero_grad()
        running = 0.98 * running + 0.02 * loss.item()
        if step % every == 0 or step == steps:
            model.eval()
            plain = sample(adapter, embeds, asked)
            accuracy, moved = read_directions(plain, asked)
            row = {"step": step, "loss": running / (1 - 0.98**step), "accuracy": accuracy, "displacement": moved}
            row.update(direction_gaps(adapter, anchor=anchor))
            for sigma, loss_s in model_losses(adapter, embeds, bx0, beps, bayes).items():
                row[f"loss_{sigma}"], (row[f"bayes_{sigma}"], row[f"bayes_blind_{sigma}"]) = loss_s, bayes[sigma]
            if given_share > 0:  # around a true clip's frame, and around the sample's own (the keyframe sampler)
                k = frame_slice(given_frame)
                true = clips(asked, torch.Generator().manual_seed(9), start, anchor)[:, :, k]
                row["given_accuracy"] = read_directions(sample(adapter, embeds, asked, 123, true, given_frame), asked)[
                    0
                ]
                own = sample(adapter, embeds, asked, 123, plain[:, :, k], given_frame)
                row["keyframe_accuracy"] = read_directions(own, asked)[0]
            model.train()
            rows.append(row)
            log(
                f"patch {patch} heads {heads} layers {layers} start {start} shift {shift} contrast {contrast} anchor {anchor} given {given_share} of frame {given_frame}: step {step} loss "
                f"{row['loss']:.4f} direction {accuracy:.2f} (chance 0.25) moved {moved:.1f} cells, reversed-caption "
                f"loss gap {row['gap_0.6']:+.1%} at sigma 0.6, {row['gap_0.9']:+.1%} at 0.9"
                + (
                    f"; frame given {row['given_accuracy']:.2f}, keyframe sampler {row['keyframe_accuracy']:.2f}"
                    if given_share > 0
                    else ""
                )
                + "; loss at sigma 0.8/0.9/0.95 "
                + "/".join(f"{row[f'loss_{s}']:.4f}" for s in bayes)
                + " (Bayes-optimal "
                + "/".join(f"{row[f'bayes_{s}']:.4f}" for s in bayes)
                + ", ignoring the caption "
                + "/".join(f"{row[f'bayes_blind_{s}']:.4f}" for s in bayes)
                + f") ({time.perf_counter() - t0:.0f} s)"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python experiments/motion_control.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--patch", type=int, choices=[1, 2, 4], default=4)
    p.add_argument("--heads", type=int, choices=[1, 2, 4, 8], default=4)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--start", choices=["inside", "free"], default="inside")
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--every", type=int, default=150)
    p.add_argument("--contrast", type=float, default=0.0, help="weight of the caption-contrast hinge (0: off)")
    p.add_argument("--margin", type=float, default=0.1, help="the hinge's margin, a share of the true loss")
    p.add_argument("--anchor", action="store_true", help="x, y and frame ramps in channels 1-3")
    p.add_argument("--given-share", type=float, default=0.0, help="share of clips trained with a frame given")
    p.add_argument("--given-frame", type=int, default=0, help="the latent frame given (0-8)")
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
        anchor=args.anchor,
        given_share=args.given_share,
        given_frame=args.given_frame,
        log=(lambda s: None) if args.json else print,
    )
    if args.json:
        print(json.dumps({**vars(args), "rows": rows}))
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
