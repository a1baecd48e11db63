"""Build the Shapes world models — the embedded default — from scratch with vidpost's own commands.

    vidpost shapes-models --out assets/shapes [--stage vae|init|data|base|sft|all] [--quick]

Stages (each writes its folder and is skipped when that folder is complete, so the command resumes):
1. `vae`   — a miniature `AutoencoderKLWan` (8× spatial, 4× temporal compression, 16 latent channels) trained
             as an autoencoder on procedurally rendered clips: L1 + L2 reconstruction of the decoded posterior
             mean + 1e-6·KL, AdamW (lr 2e-4, β2 0.99) with warm-up and cosine decay, on full 17-frame clips: the
             causal decoder's frame cache must see as many latent frames in training as it decodes later (trained
             on 5-frame clips, frames 6–17 of a 17-frame clip decoded at ~9 dB PSNR against ~17 dB for 1–5).
             Afterwards the per-channel latent mean/std over 17-frame clips are measured and written into the VAE
             config (`latents_mean` / `latents_std`), exactly where real Wan VAEs keep them.
2. `init`  — assembles a complete diffusers `WanPipeline` folder: the trained VAE, a frozen randomly initialised
             UMT5 encoder with a tokenizer built in memory over the Shapes vocabulary, and a randomly initialised
             `WanTransformer3DModel`.
3. `data`  — exports the Shapes train split as mp4 + manifest (the same format the SFT stage reads for real data).
4. `base`  — "pretraining": `vidpost sft` with full fine-tuning of the random transformer on the *noisy* captions
             (some wrong, vague or missing, like web alt-text) → `base/`, a complete model folder.
5. `sft`   — `vidpost sft` on the clean canonical captions starting from `base/` → `sft/`.
The SFT config of steps 4–5 lives in configs/shapes/{pretrain,sft}.yaml; this command only sets paths.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
NUM_FRAMES, HEIGHT, WIDTH = 17, 64, 64


def shapes_vocabulary() -> list[str]:
    """Every word of the canonical, noisy and user-style captions the Shapes world produces."""
    from vidpost.shapes import captions, world

    words: set[str] = set()
    rng = np.random.default_rng(0)
    for _ in range(4000):
        spec = world.random_scene(rng)
        for text in (captions.caption(spec), captions.paraphrase(spec, rng), captions.noisy_caption(spec, rng)):
            words.update(w.strip(".,!?;:") for w in text.lower().split())
    return sorted(w for w in words if w and w.isascii())


def _render_batch(rng: np.random.Generator, n: int, frames: int) -> torch.Tensor:
    from vidpost.shapes.world import random_scene, render

    clips = [
        render(random_scene(rng), num_frames=frames, height=HEIGHT, width=WIDTH, seed=int(rng.integers(1 << 30)))
        for _ in range(n)
    ]
    return torch.from_numpy(np.stack(clips))


def _decode_unclamped(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """`AutoencoderKLWan.decode` without its final clamp to [-1, 1]: a clamped output has no gradient, so a pixel
    that overshoots the wrong way could never recover (the training diverged with it). Same causal frame loop."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        frames.append(
            vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0)
        )
    vae.clear_cache()
    return torch.cat(frames, 2)


def train_vae(
    out: Path,
    *,
    steps: int,
    batch_size: int = 6,
    frames: int = 17,
    base_dim: int = 16,
    latent_noise: float = 0.0,
    seed: int = 0,
) -> Path:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=16,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 16,
        latents_std=[1.0] * 16,
    )
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    )
    log = []
    bar = tqdm(range(steps), desc="shapes VAE")
    for step in bar:
        x = _render_batch(rng, batch_size, frames) * 2 - 1
        post = vae.encode(x).latent_dist
        # Decode the posterior mean (optionally plus noise for robustness to imperfect latents): sampling with the
        # early, large posterior variance, or lr ≥ 5e-4, made training swing between background levels.
        z = post.mode()
        rec = _decode_unclamped(vae, z + latent_noise * torch.randn_like(z) * z.detach().std())
        l1 = (rec - x).abs().mean()
        loss = l1 + (rec - x).pow(2).mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        log.append({"step": step + 1, "l1": l1.item(), "loss": loss.item()})
        bar.set_postfix(l1=f"{l1.item():.4f}")
    vae.eval()
    with torch.no_grad():
        x = _render_batch(np.random.default_rng(seed + 1), 32, NUM_FRAMES)
        z = torch.cat([vae.encode(x[i : i + 8] * 2 - 1).latent_dist.mode() for i in range(0, 32, 8)])
        mean = z.mean(dim=(0, 2, 3, 4))
        std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
        rec = torch.cat([vae.decode(z[i : i + 8]).sample for i in range(0, 32, 8)])
        psnr = -10 * torch.log10(((rec.clamp(-1, 1) + 1) / 2 - x).pow(2).mean()).item()
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp, safe_serialization=True)
    (tmp / "training_log.json").write_text(json.dumps({"psnr_17f": psnr, "log": log[-50:]}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    print(f"VAE: reconstruction PSNR on 17-frame held-out clips {psnr:.2f} dB -> {out}", file=sys.stderr)
    return out


def build_init(vae_dir: Path, out: Path, *, seed: int = 0) -> Path:
    """A complete WanPipeline folder: trained VAE + frozen random UMT5 + random transformer (6 blocks, 4×32)."""
    from diffusers import AutoencoderKLWan

    from vidpost.models import WanAdapter

    adapter = WanAdapter.tiny(
        seed,
        words=shapes_vocabulary(),
        num_layers=6,
        num_heads=4,
        head_dim=32,
        ffn_dim=512,
        text_dim=64,
        max_sequence_length=32,
        rope_max_seq_len=64,
    )
    adapter.vae = AutoencoderKLWan.from_pretrained(vae_dir)
    adapter.default_shift = 3.0
    adapter.save_pretrained(out)
    _write_generation_defaults(out)
    return out


def _write_generation_defaults(model_dir: Path) -> None:
    f = model_dir / "vidpost.json"
    cfg = json.loads(f.read_text()) if f.exists() else {}
    cfg["generation"] = {"num_frames": NUM_FRAMES, "height": HEIGHT, "width": WIDTH, "steps": 20, "fps": 8}
    f.write_text(json.dumps(cfg, indent=2) + "\n")


def export_data(out: Path, n: int) -> Path:
    from vidpost.shapes.export import export

    return export(out, split="train", n=n, num_frames=NUM_FRAMES, height=HEIGHT, width=WIDTH, fps=8)


def run_sft(config: Path, overrides: list[str]) -> Path:
    from vidpost.pipelines.config import load_config
    from vidpost.pipelines.sft import SFTConfig, train

    cfg = load_config(SFTConfig, config, overrides)
    result = train(cfg, resume="latest")
    return Path(result["final"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vidpost shapes-models", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "assets" / "shapes")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "shapes-models", help="data, caches and logs")
    p.add_argument("--stage", choices=["vae", "init", "data", "base", "sft", "all"], default="all")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--clips", type=int, help="training clips to export (default 4000; 64 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny step counts (a smoke run, not a usable model)")
    p.add_argument("overrides", nargs="*", help="dotted overrides passed to both SFT runs")
    args = p.parse_args(argv)
    out, work = args.out, args.work
    stages = ["vae", "init", "data", "base", "sft"] if args.stage == "all" else [args.stage]
    quick = ["train.max_steps=3", "checkpoint.every=0", "validation.max_prompts=2", "validation.steps=2"]
    extra = (quick if args.quick else []) + args.overrides
    t0 = time.time()
    if "vae" in stages and not (work / "vae" / "config.json").exists():
        train_vae(work / "vae", steps=3 if args.quick else args.vae_steps)
    if "init" in stages and not (work / "init" / "model_index.json").exists():
        build_init(work / "vae", work / "init")
    if "data" in stages and not (work / "data" / "manifest.jsonl").exists():
        export_data(work / "data", args.clips or (64 if args.quick else 4000))
    manifest = work / "data" / "manifest.jsonl"
    for stage, config, start_from in (("base", "pretrain", work / "init"), ("sft", "sft", out / "base")):
        if stage in stages and not (out / stage / "model_index.json").exists():
            overrides = [f"output_dir={work / config}", f"model.path={start_from}", f"data.manifest={manifest}"]
            final = run_sft(ROOT / "configs" / "shapes" / f"{config}.yaml", [*overrides, *extra])
            shutil.rmtree(out / stage, ignore_errors=True)
            shutil.copytree(final, out / stage)
            _write_generation_defaults(out / stage)
    print(f"shapes models: done in {(time.time() - t0) / 60:.1f} min -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
