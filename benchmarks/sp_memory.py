"""Per-GPU memory of a full fine-tune under sequence parallelism, FSDP and gradient checkpointing — estimates computed
from the architectures, not measured.

    python benchmarks/sp_memory.py [--gpus 8] [--out benchmarks/sp_memory.md]

Model states: every transformer parameter trains in float32 with its gradient and AdamW's two moments (16 bytes per
parameter, as `vidpost sft` keeps them); FSDP shards them over all `--gpus` ranks (SP ranks included), without FSDP
every rank holds them all. Activations of one sample (bf16, flash-style attention that keeps no score matrix): a Wan
block saves about 16·h + 2·f values per video token for its backward (norms, Q/K/V and their RMS-normed copies, the
attention and cross-attention outputs and projections' inputs, the modulated residuals: ~16·h; the FFN's up
projection and GELU outputs: 2·f), over all blocks; with gradient checkpointing each block keeps only its input
(h values per token) and one block at a time holds its full set while it is recomputed. Sequence parallelism divides
the video tokens, hence the activations, by its degree (Ulysses' all-to-all buffers, one layer's Q/K/V, are left
out). Left out everywhere: the text encoder and VAE (the latent cache replaces them in SFT), the CUDA context and
allocator fragmentation (~2–4 GB).
"""

from __future__ import annotations

import argparse
from pathlib import Path

CASES = [
    ("wan2.1-t2v-1.3b", "480p × 81 frames", 21, 60, 104),
    ("wan2.1-t2v-14b", "720p × 81 frames", 21, 90, 160),
]


def estimate(arch: str, frames: int, lh: int, lw: int, sp: int, fsdp: bool, ckpt: bool, gpus: int) -> dict:
    from vidpost.models.architectures import WAN_COMMON, WAN_TRANSFORMERS, meta_transformer

    a = WAN_TRANSFORMERS[arch]
    h, f, layers = a["num_attention_heads"] * a["attention_head_dim"], a["ffn_dim"], a["num_layers"]
    p = WAN_COMMON["patch_size"]
    tokens = frames // p[0] * (lh // p[1]) * (lw // p[2])
    params = sum(x.numel() for x in meta_transformer(arch).parameters())
    states = 16 * params / (gpus if fsdp else 1)
    local = tokens / sp
    per_block = (16 * h + 2 * f) * 2 * local
    acts = layers * h * 2 * local + per_block if ckpt else layers * per_block
    return {"tokens": tokens, "params": params, "states": states, "acts": acts, "total": states + acts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    gb = 1e9
    lines = [
        f"Estimates per GPU on {args.gpus} GPUs, one sample per SP group, full fine-tune (fp32 weights + gradients + "
        "AdamW); GB = 10⁹ bytes. `python benchmarks/sp_memory.py`.",
        "",
        "| model, video (tokens) | SP | FSDP | grad. ckpt | model states | activations | total |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for arch, video, frames, lh, lw in CASES:
        for fsdp in (False, True):
            for ckpt in (False, True):
                for sp in (1, 2, 4, 8):
                    e = estimate(arch, frames, lh, lw, sp, fsdp, ckpt, args.gpus)
                    lines.append(
                        f"| {arch} ({e['params'] / 1e9:.2f} B), {video} ({e['tokens']:,}) | {sp} | "
                        f"{'yes' if fsdp else 'no'} | {'yes' if ckpt else 'no'} | {e['states'] / gb:.1f} | "
                        f"{e['acts'] / gb:.1f} | {e['total'] / gb:.1f} |"
                    )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
