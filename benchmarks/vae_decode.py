"""Wan VAE decode on the CPU: the default (contiguous) weight layout against channels-last, side by side.

    python benchmarks/vae_decode.py [--model shapes] [--batch 8] [--frames 17] [--height 64] [--width 64] [--repeats 3]

`WanAdapter.decode` holds the VAE's convolution weights in channels-last layout while it decodes on the CPU
(`vidpost.models.wan.vae_decode`, the function both columns call). This script decodes the same random latents both ways, alternating the two
for `--repeats` rounds after one warm-up each, and prints the median seconds per clip, the ratio and the largest
absolute difference between the two outputs. Decoding is most of the time of a GRPO rollout and of an evaluation
on the Shapes world, so the ratio carries over to both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="shapes")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from vidpost.models import load
    from vidpost.models.wan import vae_decode

    adapter = load(args.model)
    z = torch.randn(adapter.latent_shape(args.batch, args.frames, args.height, args.width))
    mean, std = adapter._latent_norm(z)
    z = z * std + mean

    def default() -> torch.Tensor:
        return vae_decode(adapter.vae, z, channels_last_weights=False)

    def layout() -> torch.Tensor:
        return vae_decode(adapter.vae, z, channels_last_weights=True)

    times: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
    with torch.no_grad():
        outs = {"contiguous": default(), "channels_last": layout()}  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("contiguous", default), ("channels_last", layout)):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) / args.batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = (outs["contiguous"] - outs["channels_last"]).abs().max().item()
    print(
        f"VAE decode, {args.batch}×{args.frames}×{args.height}×{args.width}, {torch.get_num_threads()} threads: "
        f"contiguous {med['contiguous'] * 1000:.0f} ms/clip, channels-last {med['channels_last'] * 1000:.0f} ms/clip, "
        f"ratio {med['contiguous'] / med['channels_last']:.2f}×, max |diff| {diff:.1e}"
    )


if __name__ == "__main__":
    main()
