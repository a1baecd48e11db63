"""SFT step time vs a bare forward + backward + AdamW step of the same diffusers transformer on the same batch.

    python benchmarks/bench_sft.py [--layers 8 --heads 4 --head-dim 32 --batch 8 --steps 12]

Both run in this process, side by side, on a mid-size miniature `WanTransformer3DModel` (full fine-tuning,
float32, CPU by default): "bare" is the minimal loop anyone would write (forward, backward, gradient clipping,
AdamW step); "vidpost" is `vidpost.pipelines.sft.train`
reading the same latents from its cache (data slicing, caption dropout, timestep sampling, loss, clipping,
scheduler, logging). Reported: median step seconds of each (first 3 steps discarded) and the overhead ratio.
Target: overhead ≤ 10%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    from vidpost.config import load_config
    from vidpost.models import WanAdapter
    from vidpost.pipelines.sft import SFTConfig, train

    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    adapter = WanAdapter.tiny(
        num_layers=args.layers, num_heads=args.heads, head_dim=args.head_dim, ffn_dim=4 * args.heads * args.head_dim
    )
    adapter.save_pretrained(tmp / "model")
    shape = adapter.latent_shape(1, args.frames, args.size, args.size)[1:]
    n = args.batch * 4
    emb = adapter.encode_prompt([f"a red circle moves {i}" for i in range(n)])
    cache = tmp / "cache"
    cache.mkdir()
    save_file({"latents": torch.randn(n, *shape), "prompt_embeds": emb.embeds}, str(cache / "shard_00000.safetensors"))
    items = [{"video": f"{i}.mp4", "caption": "x"} for i in range(n)]
    bucket = {"num_frames": args.frames, "height": args.size, "width": args.size}
    (cache / "shard_00000.json").write_text(json.dumps({"bucket": bucket, "items": items}))
    save_file({"prompt_embeds": adapter.encode_prompt([""]).embeds}, str(cache / "null_prompt.safetensors"))
    (cache / "summary.json").write_text("{}")

    # bare loop
    torch.manual_seed(0)
    model = (
        WanAdapter.tiny(
            num_layers=args.layers,
            num_heads=args.heads,
            head_dim=args.head_dim,
            ffn_dim=4 * args.heads * args.head_dim,
        )
        .transformer.requires_grad_(True)
        .train()
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(args.batch, *shape)
    e = emb.embeds[: args.batch]
    bare = []
    for _ in range(args.steps):
        t = time.perf_counter()
        sigma = torch.rand(args.batch)
        noise = torch.randn_like(x0)
        xt = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
        pred = model(xt, sigma * 1000, e, return_dict=False)[0]
        loss = ((pred - (noise - x0)) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bare.append(time.perf_counter() - t)

    cfg = load_config(
        SFTConfig,
        None,
        [
            f"output_dir={tmp / 'run'}",
            f"model.path={tmp / 'model'}",
            f"data.cache_dir={cache}",
            f"data.buckets=[[{args.frames}, {args.size}, {args.size}]]",
            "lora.enabled=false",
            f"train.batch_size={args.batch}",
            f"train.max_steps={args.steps}",
            "checkpoint.every=0",
            "validation.prompts=[]",
            "log.tensorboard=false",
            "optim.lr=1e-4",
        ],
    )
    hist = train(cfg).history
    ours = [h["step_seconds"] for h in hist]
    b, o = statistics.median(bare[3:]), statistics.median(ours[3:])
    params = sum(p.numel() for p in model.parameters()) / 1e6
    tokens = shape[1] * (shape[2] // 2) * (shape[3] // 2)
    print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'} ({torch.get_num_threads()} threads)")
    print(
        f"model: WanTransformer3DModel {params:.1f}M params, {args.layers} layers; batch {args.batch} x {tokens} tokens"
    )
    print(f"bare fwd+bwd+clip+AdamW:     {b * 1000:.1f} ms/step (median of {len(bare) - 3})")
    print(f"vidpost sft step:            {o * 1000:.1f} ms/step (median of {len(ours) - 3})")
    print(f"overhead: {100 * (o / b - 1):+.1f}%  (target <= 10%)")


if __name__ == "__main__":
    main()
