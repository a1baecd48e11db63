"""What the Shapes transformer costs with each VAE's latent layout, side by side in one run.

    python benchmarks/bench_shapes_layouts.py [--repeats 3] [--threads 2]

The Shapes transformer (6 blocks, 4 heads × 32, random weights) with patches of 16×16 pixels on the latents of
a 17×64×64 clip from each VAE layout (16 latent channels unless named): one AdamW training step at batch 32 (the SFT configs' batch) and one
forward at batch 2 (the sampler's classifier-free-guidance batch). Prints each layout's tokens, seconds and its
ratio to the first row. The best of `--repeats` after one warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from vidpost.models import WanAdapter
from vidpost.pipelines.shapes_models import shapes_vocabulary

LAYOUTS = [  # name, patch, latent (channels, frames, height, width)
    ("8x spatial, 4x temporal VAE, 1x2x2 patches", 2, (16, 5, 8, 8)),
    ("4x spatial, 4x temporal VAE, 1x4x4 patches", 4, (16, 5, 16, 16)),
    ("4x spatial, 2x temporal VAE, 1x4x4 patches", 4, (16, 9, 16, 16)),
    ("4x2 VAE, 4 channels, 1x4x4 patches", 4, (4, 9, 16, 16)),
]


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(words: list[str], patch: int, latent: tuple[int, int, int, int], repeats: int) -> tuple[int, float, float]:
    """(tokens, seconds per training step at batch 32, seconds per forward at batch 2) for one layout."""
    channels, *latent = latent
    kw = dict(num_layers=6, num_heads=4, head_dim=32, ffn_dim=512, text_dim=64, max_sequence_length=32)
    kw["latent_channels"] = channels
    adapter = WanAdapter.tiny(0, words=words, rope_max_seq_len=64, patch_size=(1, patch, patch), **kw)
    model = adapter.transformer.requires_grad_(True).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cond32 = adapter.encode_prompt(["a red circle moves to the right"] * 32)
    cond2 = adapter.encode_prompt(["a red circle moves to the right", ""])
    x, sigma = torch.randn(32, channels, *latent), torch.rand(32)

    def step() -> None:
        loss = adapter.forward_transformer(x, sigma, cond32, 1.0).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    def forward() -> None:
        with torch.no_grad():
            adapter.forward_transformer(x[:2], sigma[:2], cond2, 1.0)

    tokens = latent[0] * (latent[1] // patch) * (latent[2] // patch)
    return tokens, best_time(step, repeats), best_time(forward, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    words = shapes_vocabulary()
    rows = [(name, *measure(words, patch, latent, args.repeats)) for name, patch, latent in LAYOUTS]
    print(f"{'layout':46s}{'tokens':>7s}{'train b32 (s)':>15s}{'ratio':>7s}{'fwd b2 (ms)':>13s}{'ratio':>7s}")
    for name, tokens, train, fwd in rows:
        print(f"{name:46s}{tokens:7d}{train:15.3f}{train / rows[0][2]:7.2f}{1000 * fwd:13.1f}{fwd / rows[0][3]:7.2f}")


if __name__ == "__main__":
    main()
