"""Build the Shapes world models — the embedded default — from scratch with vidpost's own commands.

    vidpost shapes-models --out assets/shapes [--stage vae|init|data|base|sft|all] [--quick]

Stages (each writes its folder and is skipped when that folder is complete, so the command resumes):
1. `vae`   — a miniature `AutoencoderKLWan` (8× spatial, 4× temporal compression, 16 latent channels) trained
             as an autoencoder on procedurally rendered clips, in two phases: first on single frames (the causal
             3D convolutions then act as 2D ones; 1500 steps, batch 16), then — after setting every video-only
             weight to "process each frame like the image" (past-frame taps zeroed, temporal downsampling keeps
             the newest frame, temporal upsampling repeats it) — on full 17-frame clips (800 steps, batch 4): the
             causal decoder's frame cache must see as many latent frames in training as it decodes later; then
             300 steps at half the lr with an edge term (L1 of the spatial gradients), which keeps the corners
             of small squares, triangles and diamonds that the pixel losses round off.
             Loss: L1 + L2 of the decoded posterior mean, pixels that differ from the background weighted 9×
             (objects cover a few percent of a frame), + 1e-6·KL; AdamW lr 2e-4, β2 0.99, warm-up + cosine.
             The report records the verifier's success on reconstructions of the held-out clips: the ceiling
             for every model built on this VAE.
             What did not work: lr ≥ 5e-4 or decoding a sampled posterior collapses the autoencoder to an
             input-independent "mean clip" within a few dozen steps; unweighted training from scratch on 17-frame
             clips reached only ~16 dB after 700 steps with every shape lost; training on 5-frame clips decodes
             frames 6–17 at ~9 dB. Afterwards the per-channel latent mean/std over 17-frame clips are written into
             the VAE config (`latents_mean` / `latents_std`), exactly where real Wan VAEs keep them.
2. `init`  — assembles a complete diffusers `WanPipeline` folder: the trained VAE, a frozen randomly initialised
             UMT5 encoder with a tokenizer built in memory over the Shapes vocabulary, and a randomly initialised
             `WanTransformer3DModel`.
3. `data`  — exports the Shapes train split as mp4 + manifest (the same format the SFT stage reads for real data).
4. `base`  — "pretraining": `vidpost sft` with full fine-tuning of the random transformer on the *noisy* captions
             (some wrong, vague or missing, like web alt-text) → `base/`, a complete model folder.
5. `sft`   — `vidpost sft` on the clean canonical captions starting from `base/`, in two phases: `sft.yaml`
             (9000 steps, unshifted logit-normal timesteps), then `sft-motion.yaml` (4500 steps with the
             timesteps shifted like the sampler's, shift 3, which is what teaches direction of motion) → `sft/`.
The SFT configs of steps 4–5 live in configs/shapes/{pretrain,sft,sft-motion}.yaml; this command only sets paths.
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

from vidpost.training.runner import ExitCode

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


def _foreground(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, H, W] mask of pixels whose colour differs from the clip's background (the median colour of its
    first frame — backgrounds are flat and objects cover well under half of it)."""
    bg = x[:, :, :1].flatten(2).median(dim=2).values[:, :, None, None, None]
    return ((x - bg).abs().amax(dim=1, keepdim=True) > 0.1).float()


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
    image_steps: int = 0,
    batch_size: int = 4,
    image_batch_size: int = 16,
    frames: int = 17,
    base_dim: int = 16,
    lr: float = 2e-4,
    fg_weight: float = 8.0,
    seed: int = 0,
    sharpen_steps: int = 0,
    edge_weight: float = 1.0,
    start_from: Path | None = None,
    skip_phases: int = 0,
) -> Path:
    """Train the Shapes VAE: `image_steps` on single frames (batch `image_batch_size`), then `steps` on
    `frames`-frame clips, then `sharpen_steps` more on clips at half the lr with an edge term (L1 between the
    spatial gradients of the reconstruction and of the clip, weighted like the pixels): the pixel losses alone
    round the corners of small squares, triangles and diamonds.
    `start_from` + `skip_phases`: weights saved by a run with the same settings that stopped after that many
    phases (the clips of each phase come from their own seeded stream, so the result equals one uninterrupted
    run)."""
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
    log: list[dict[str, float]] = []
    if start_from is not None:
        from safetensors.torch import load_file

        vae.load_state_dict(load_file(str(Path(start_from) / "diffusion_pytorch_model.safetensors")))
    phases = (
        ("image", image_steps, 1, image_batch_size, lr, 0.0),
        ("video", steps, frames, batch_size, lr, 0.0),
        ("sharpen", sharpen_steps, frames, batch_size, lr / 2, edge_weight),
    )
    for index, (phase, n, clip_frames, batch, phase_lr, edges) in enumerate(phases):
        if n <= 0 or index < skip_phases:
            continue
        if index > 0:
            rng = np.random.default_rng([seed, index])
        if phase == "video" and image_steps > 0:
            _causal_identity_init(vae)
        opt = torch.optim.AdamW(vae.parameters(), lr=phase_lr, betas=(0.9, 0.99), weight_decay=0.0)
        warmup = max(1, n // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s, n=n, w=warmup: min(1.0, (s + 1) / w) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / n)))
        )
        bar = tqdm(range(n), desc=f"shapes VAE ({phase})")
        for step in bar:
            x = _render_batch(rng, batch, clip_frames) * 2 - 1
            post = vae.encode(x).latent_dist
            # Decode the posterior mean: sampling with the early, large posterior variance, or lr ≥ 5e-4, made the
            # autoencoder collapse to an input-independent "mean clip" within a few dozen steps.
            rec = _decode_unclamped(vae, post.mode())
            # Objects cover a few percent of the frame: unweighted, the autoencoder first settles on "background
            # only" and learns the shapes very slowly. Pixels that differ from the background weigh more.
            weight = 1 + fg_weight * _foreground(x)
            err = rec - x
            loss = (weight * (err.abs() + err.pow(2))).mean() / weight.mean() + 1e-6 * post.kl().mean()
            if edges > 0:
                gx = (rec.diff(dim=-1) - x.diff(dim=-1)).abs() * weight[..., 1:]
                gy = (rec.diff(dim=-2) - x.diff(dim=-2)).abs() * weight[..., 1:, :]
                loss = loss + edges * (gx.mean() + gy.mean()) / weight.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            sched.step()
            l1 = err.abs().mean().item()
            log.append({"phase": phase, "step": step + 1, "l1": l1, "loss": loss.item()})
            bar.set_postfix(l1=f"{l1:.4f}")
    vae.eval()
    psnr, per_frame, mean, std = _vae_report(vae, seed + 1)
    ceiling = reconstruction_verifier_success(vae)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp, safe_serialization=True)
    report = {"psnr_17f": psnr, "psnr_per_frame": per_frame, "heldout_reconstruction": ceiling, "log": log[-50:]}
    (tmp / "training_log.json").write_text(json.dumps(report, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    print(
        f"VAE: reconstruction PSNR {psnr:.2f} dB on fresh 17-frame clips; verifier success on reconstructions of the "
        f"held-out clips {ceiling['success']:.3f} (a ceiling for any model using this VAE) -> {out}",
        file=sys.stderr,
    )
    return out


def _causal_identity_init(vae: torch.nn.Module) -> None:
    """After image-only training, make every video-only weight start as "treat each frame like the image":
    the past-frame taps of the causal 3D convolutions (never used on single frames) are zeroed, the encoder's
    temporal downsampling keeps the newest frame of each pair, and the decoder's temporal upsampling repeats a
    frame. Video training then starts from a working per-frame autoencoder instead of random temporal mixing."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample

    time_convs = set()
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, WanResample) and hasattr(module, "time_conv"):
                conv = module.time_conv
                time_convs.add(conv)
                conv.weight.zero_()
                conv.bias.zero_()
                c_in = conv.weight.shape[1]
                eye = torch.eye(c_in, dtype=conv.weight.dtype)
                for k in range(conv.weight.shape[0] // c_in):  # 1 for downsampling, 2 (both new frames) for up
                    conv.weight[k * c_in : (k + 1) * c_in, :, -1, 0, 0] = eye
        for module in vae.modules():
            if isinstance(module, WanCausalConv3d) and module not in time_convs and module.weight.shape[2] > 1:
                module.weight[:, :, :-1] = 0


@torch.no_grad()
def reconstruction_verifier_success(vae: torch.nn.Module) -> dict[str, float]:
    """The verifier on VAE reconstructions of the held-out ground-truth clips: success rate and per-attribute
    rates. No generator using this VAE can be expected to do better on the held-out prompts."""
    from vidpost.shapes.splits import heldout_prompts
    from vidpost.shapes.verifier import ATTRIBUTES, verify_batch
    from vidpost.shapes.world import SceneSpec, render

    items = heldout_prompts()
    specs = [SceneSpec.from_dict(it["spec"]) for it in items]
    clips = torch.from_numpy(
        np.stack(
            [
                render(s, num_frames=NUM_FRAMES, height=HEIGHT, width=WIDTH, seed=it["seed"])
                for s, it in zip(specs, items)
            ]
        )
    )
    rec = torch.cat(
        [vae.decode(vae.encode(clips[i : i + 8] * 2 - 1).latent_dist.mode()).sample for i in range(0, len(clips), 8)]
    )
    res = verify_batch(((rec.clamp(-1, 1) + 1) / 2).numpy(), specs)
    return {"success": float(res["success"].mean()), **{a: float(res[f"{a}_ok"].mean()) for a in ATTRIBUTES}}


@torch.no_grad()
def _vae_report(vae: torch.nn.Module, seed: int, n: int = 32) -> tuple[float, list[float], list[float], list[float]]:
    """Reconstruction PSNR (overall and per frame) on `n` fresh 17-frame clips, and the per-channel latent
    mean/std that the config records as `latents_mean` / `latents_std`."""
    x = _render_batch(np.random.default_rng(seed), n, NUM_FRAMES)
    z = torch.cat([vae.encode(x[i : i + 8] * 2 - 1).latent_dist.mode() for i in range(0, n, 8)])
    rec = torch.cat([vae.decode(z[i : i + 8]).sample for i in range(0, n, 8)])
    mse = ((rec.clamp(-1, 1) + 1) / 2 - x).pow(2)
    psnr = -10 * torch.log10(mse.mean()).item()
    per_frame = (-10 * torch.log10(mse.mean(dim=(0, 1, 3, 4)))).tolist()
    mean = z.mean(dim=(0, 2, 3, 4)).tolist()
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3).tolist()
    return psnr, [round(p, 2) for p in per_frame], mean, std


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


def recaption_cache(src: Path, dst: Path, model_dir: Path, manifest: Path, caption_key: str) -> None:
    """Build the SFT stage's latent cache from the pretraining one: the same clips and VAE latents (both stages
    share the VAE and the frozen text encoder), with the text embeddings of another caption column. Saves
    encoding every clip a second time."""
    from safetensors.torch import load_file, save_file

    from vidpost.media.data import _embeds_to_tensors, read_manifest
    from vidpost.models import load

    captions = {r["video"]: r["caption"] for r in read_manifest(manifest, caption_key)}
    adapter = load(model_dir)
    tmp = dst.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(src / "null_prompt.safetensors", tmp / "null_prompt.safetensors")
    for shard in tqdm(sorted(src.glob("shard_*.safetensors")), desc="re-caption cache"):
        meta = json.loads(shard.with_suffix(".json").read_text())
        for item in meta["items"]:
            item["caption"] = captions[item["video"]]
        tensors = {"latents": load_file(str(shard))["latents"]}
        with torch.no_grad():
            tensors.update(_embeds_to_tensors(adapter.encode_prompt([it["caption"] for it in meta["items"]]), ""))
        save_file(tensors, str(tmp / shard.name))
        (tmp / shard.with_suffix(".json").name).write_text(json.dumps(meta) + "\n")
    for name in ("summary.json", "bad_videos.jsonl"):
        if (src / name).exists():
            shutil.copy(src / name, tmp / name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.replace(dst)


def run_sft(config: Path, overrides: list[str]) -> Path:
    from vidpost.config import load_config
    from vidpost.pipelines.sft import SFTConfig, train

    return train(load_config(SFTConfig, config, overrides), resume="latest").final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vidpost shapes-models", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "assets" / "shapes")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "shapes-models", help="data, caches and logs")
    p.add_argument("--stage", choices=["vae", "init", "data", "base", "sft", "all"], default="all")
    p.add_argument("--vae-steps", type=int, default=800, help="VAE steps on 17-frame clips (batch 4)")
    p.add_argument("--vae-image-steps", type=int, default=1500, help="VAE steps on single frames first (batch 16)")
    p.add_argument("--vae-sharpen-steps", type=int, default=300, help="last VAE steps with the edge loss")
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
        train_vae(
            work / "vae",
            steps=3 if args.quick else args.vae_steps,
            image_steps=3 if args.quick else args.vae_image_steps,
            sharpen_steps=3 if args.quick else args.vae_sharpen_steps,
        )
    if "init" in stages and not (work / "init" / "model_index.json").exists():
        build_init(work / "vae", work / "init")
    if "data" in stages and not (work / "data" / "manifest.jsonl").exists():
        export_data(work / "data", args.clips or (64 if args.quick else 4000))
    manifest = work / "data" / "manifest.jsonl"
    phases = {"base": (["pretrain"], work / "init"), "sft": (["sft", "sft-motion"], out / "base")}
    for stage, (configs, start_from) in phases.items():
        if stage in stages and not (out / stage / "model_index.json").exists():
            pretrain_cache, sft_cache = work / "pretrain" / "cache", work / "sft" / "cache"
            if stage == "sft" and (pretrain_cache / "summary.json").exists() and not sft_cache.exists():
                recaption_cache(pretrain_cache, sft_cache, start_from, manifest, "caption")
            final = start_from
            for config in configs:  # each phase continues from the previous one's weights, on the same cache
                overrides = [
                    f"output_dir={work / config}",
                    f"model.path={final}",
                    f"data.manifest={manifest}",
                    f"data.cache_dir={work / configs[0] / 'cache'}",
                ]
                final = run_sft(ROOT / "configs" / "shapes" / f"{config}.yaml", [*overrides, *extra])
            shutil.rmtree(out / stage, ignore_errors=True)
            shutil.copytree(final, out / stage)
            _write_generation_defaults(out / stage)
    print(f"shapes models: done in {(time.time() - t0) / 60:.1f} min -> {out}", file=sys.stderr)
    return ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
