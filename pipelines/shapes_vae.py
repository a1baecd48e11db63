"""The Shapes world's VAE: a miniature `AutoencoderKLWan` trained as an autoencoder on procedurally rendered clips
(stage `vae` of `vidpost shapes models`), resumable from a checkpoint written every `ckpt_every` steps.

Architecture. `spatial=4` (the default): `dim_mult` [1, 2, 2], both down-sampling stages also temporal — 4×
spatial and 4× temporal compression, a 17×64×64 clip is a 5×16×16×16 latent; the transformer then uses patches of
1×4×4, so it sees the same 5×4×4 tokens as with `spatial=8` (`dim_mult` [1, 2, 2, 2], the first stage spatial only;
8×8 latents, patches 1×2×2), at the same cost. At 8× a small object covers one or two latent cells and the VAE
rounds squares, triangles and diamonds into blobs (the verifier accepted 31% of its reconstructions of the held-out
clips); at 4× it has four times the cells to draw corners with. `z_dim` (16 unless given) is the latent
channels; the shipped VAE narrows a 16-channel one to 4 (`narrow_latents`) so that the transformer's 1×4×4 patches
are 64 values, as the 8× VAE's 1×2×2 patches were.

Training, in three phases: first on single frames (the causal 3D convolutions then act as 2D ones), then — after
setting every video-only weight to "process each frame like the image" (past-frame taps zeroed, temporal
downsampling keeps the newest frame, temporal upsampling repeats it) — on full 17-frame clips (the causal
decoder's frame cache must see as many latent frames in training as it decodes later); then at half the lr with an
edge term (L1 of the spatial gradients), which keeps the corners of small shapes that the pixel losses round off.
Loss: L1 + L2 of the decoded posterior mean, pixels that differ from the background weighted 9× (objects cover a
few percent of a frame), + 1e-6·KL; AdamW lr 2e-4, β2 0.99, warm-up + cosine per phase.
What did not work (8×): lr ≥ 5e-4 or decoding a sampled posterior collapses the autoencoder to an input-independent
"mean clip" within a few dozen steps; unweighted training from scratch on 17-frame clips reached only ~16 dB after
700 steps with every shape lost; training on 5-frame clips decodes frames 6–17 at ~9 dB. Afterwards the per-channel
latent mean/std over 17-frame clips are written into the VAE config (`latents_mean` / `latents_std`), exactly
where real Wan VAEs keep them, and `training_log.json` records the verifier's success on the VAE's
reconstructions of the held-out clips (`vidpost shapes ceiling --model <vae folder>` measures it in full).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vidpost.outputs import atomic_dir, write_text
from vidpost.training.checkpoint import read_state, write_state

NUM_FRAMES, HEIGHT, WIDTH = 17, 64, 64
ARCHITECTURES = {
    (4, 4): ([1, 2, 2], [True, True]),
    (4, 2): ([1, 2, 2], [False, True]),
    (8, 4): ([1, 2, 2, 2], [False, True, True]),
}
"""(spatial, temporal) compression → (dim_mult, temperal_downsample) of the `AutoencoderKLWan`"""


def make_vae(spatial: int = 4, base_dim: int = 16, temporal: int = 4, z_dim: int = 16) -> torch.nn.Module:
    """A fresh Shapes VAE with `spatial`× and `temporal`× compression (`ARCHITECTURES`) and `z_dim` latent
    channels."""
    from diffusers import AutoencoderKLWan

    if (spatial, temporal) not in ARCHITECTURES:
        raise ValueError(f"(spatial, temporal) compression must be one of {sorted(ARCHITECTURES)}")
    dim_mult, temporal_down = ARCHITECTURES[spatial, temporal]
    return AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=1,
        temperal_downsample=temporal_down,
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
        scale_factor_spatial=spatial,
        scale_factor_temporal=temporal,
    )


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


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """The training state (safetensors + JSON: nothing is unpickled on resume) as the folder `path`, atomically."""
    with atomic_dir(path, what="the VAE training state") as tmp:
        write_state(tmp, state, "state")


def train_vae(
    out: Path,
    *,
    steps: int,
    image_steps: int = 0,
    batch_size: int = 4,
    image_batch_size: int = 16,
    frames: int = 17,
    spatial: int = 4,
    base_dim: int = 16,
    lr: float = 2e-4,
    fg_weight: float = 8.0,
    seed: int = 0,
    sharpen_steps: int = 0,
    edge_weight: float = 1.0,
    ckpt_every: int = 100,
    start_from: Path | None = None,
    temporal: int = 4,
    z_dim: int = 16,
) -> Path:
    """Train the Shapes VAE (module doc): `image_steps` on single frames (batch `image_batch_size`), then `steps` on
    `frames`-frame clips, then `sharpen_steps` more on clips at half the lr with the edge term. Every `ckpt_every`
    steps the whole state (weights, optimizer, schedule, the clip generator, the log) goes to `<out>.state/`; a run
    that finds it continues from it and ends with the weights an uninterrupted run would have. `start_from`: a
    trained VAE folder to continue training (e.g. with `image_steps=0`: more clip and edge steps); its weights are
    taken where names and shapes match (so a 4×-temporal VAE can start a 2×-temporal one); one with more latent
    channels than `z_dim` starts it through `narrow_latents`."""
    torch.manual_seed(seed)
    vae = make_vae(spatial, base_dim, temporal, z_dim)
    if start_from is not None:
        from diffusers import AutoencoderKLWan

        wide = AutoencoderKLWan.from_pretrained(start_from)
        load_matching(vae, wide)
        if wide.config.z_dim > z_dim:
            narrow_latents(vae, wide, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = out.with_suffix(".state")
    phases = (
        ("image", image_steps, 1, image_batch_size, lr, 0.0),
        ("video", steps, frames, batch_size, lr, 0.0),
        ("sharpen", sharpen_steps, frames, batch_size, lr / 2, edge_weight),
    )
    state: dict[str, Any] = {"phase": 0, "step": 0, "log": []}
    if ckpt.exists():
        saved = read_state(ckpt, "state")
        own = vae.state_dict()
        if set(saved["vae"]) == set(own) and all(saved["vae"][k].shape == v.shape for k, v in own.items()):
            state = saved
            vae.load_state_dict(state["vae"])
            print(
                f"VAE: resuming phase {phases[state['phase']][0]} at step {state['step']} from {ckpt}", file=sys.stderr
            )
        else:
            print(f"VAE: {ckpt} holds another architecture; starting this VAE from scratch", file=sys.stderr)
    log: list[dict[str, float]] = state["log"]
    for index, (phase, n, clip_frames, batch, phase_lr, edges) in enumerate(phases):
        if n <= 0 or index < state["phase"]:
            continue
        resuming = index == state["phase"] and state["step"] > 0
        rng = np.random.default_rng(seed if index == 0 else [seed, index])
        if phase == "video" and image_steps > 0 and not resuming:
            _causal_identity_init(vae)
        opt = torch.optim.AdamW(vae.parameters(), lr=phase_lr, betas=(0.9, 0.99), weight_decay=0.0)
        warmup = max(1, n // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s, n=n, w=warmup: min(1.0, (s + 1) / w) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / n)))
        )
        start = 0
        if resuming:
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            start = state["step"]
        bar = tqdm(range(start, n), desc=f"shapes VAE ({phase})", initial=start, total=n)
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
            done = step + 1 == n
            if ckpt_every and ((step + 1) % ckpt_every == 0 or done):
                nxt = {"phase": index + 1, "step": 0} if done else {"phase": index, "step": step + 1}
                extra = {} if done else {"opt": opt.state_dict(), "sched": sched.state_dict()}
                extra |= {"rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
                _save_state(ckpt, {**nxt, "vae": vae.state_dict(), "log": log, **extra})
    vae.eval()
    psnr, per_frame, mean, std = _vae_report(vae, seed + 1)
    ceiling = reconstruction_verifier_success(vae)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    report = {"psnr_17f": psnr, "psnr_per_frame": per_frame, "heldout_reconstruction": ceiling, "log": log[-50:]}
    with atomic_dir(out, what="the VAE folder") as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
        write_text(tmp / "training_log.json", json.dumps(report, indent=1))
    shutil.rmtree(ckpt, ignore_errors=True)
    print(
        f"VAE: reconstruction PSNR {psnr:.2f} dB on fresh 17-frame clips; verifier success on reconstructions of the "
        f"held-out clips {ceiling['success']:.3f} (a ceiling for any model using this VAE) -> {out}",
        file=sys.stderr,
    )
    return out


def load_matching(vae: torch.nn.Module, other: torch.nn.Module) -> None:
    """Copy into `vae` every tensor of `other` whose name and shape match; the rest stay as they are."""
    own = vae.state_dict()
    matching = {k: v for k, v in other.state_dict().items() if k in own and own[k].shape == v.shape}
    vae.load_state_dict(matching, strict=False)


@torch.no_grad()
def narrow_latents(vae: torch.nn.Module, wide: torch.nn.Module, seed: int, n: int = 32) -> None:
    """Start `vae` (`z_dim` k) from `wide`, a trained VAE of the same architecture with K > k latent channels: its
    latents' k principal directions (over the posterior means of `n` fresh clips) become the k channels. The 1×1
    convolutions around the latent are folded into the two 3×3×3 ones next to it: the encoder's last convolution
    emits the projected means directly (its log-variance channels start at the wide VAE's mean log-variance), the
    decoder's first convolution reads the k channels as their point in the wide latent space, and `quant_conv` /
    `post_quant_conv` start as identities, except that the wide decoder's constant input offset goes into
    `post_quant_conv`'s bias as far as the k channels span it (all of it when k = K, so that this reproduces `wide`
    exactly: the decoder's first convolution pads its input with zeros, so a constant folded into its bias would
    differ at the borders). The K − k dropped directions are what the fine-tuning must recover.
    Fewer channels are what a small transformer can predict: with 1×4×4 patches a token's output is 16·k values,
    and 16 channels (256 values) are more than a 128-wide model's output projection can span."""
    k, big = vae.config.z_dim, wide.config.z_dim
    x = _render_batch(np.random.default_rng([seed, 99]), n, NUM_FRAMES) * 2 - 1
    posteriors = [wide.encode(x[i : i + 8]).latent_dist for i in range(0, n, 8)]
    mu_all = torch.cat([p.mean for p in posteriors]).transpose(0, 1).flatten(1)  # [K, N·T·H·W]
    logvar = torch.cat([p.logvar for p in posteriors]).mean().item()
    mean = mu_all.mean(1)
    centred = mu_all - mean[:, None]
    _, vecs = torch.linalg.eigh(centred @ centred.T / centred.shape[1])
    basis = vecs[:, -k:].flip(1)  # [K, k], the leading direction first
    enc, quant = wide.encoder.conv_out, wide.quant_conv
    q = quant.weight[:big, :, 0, 0, 0]  # [K, 2K]: the wide VAE's mean rows
    to_mean = basis.T @ q  # [k, 2K]
    out = vae.encoder.conv_out
    out.weight.zero_()
    out.weight[:k] = torch.einsum("kj,j...->k...", to_mean, enc.weight)
    out.bias[:k] = to_mean @ enc.bias + basis.T @ (quant.bias[:big] - mean)
    out.bias[k:] = logvar
    for conv in (vae.quant_conv, vae.post_quant_conv):
        conv.weight.zero_()
        conv.weight[:, :, 0, 0, 0] = torch.eye(conv.weight.shape[0])
        conv.bias.zero_()
    post, first = wide.post_quant_conv, wide.decoder.conv_in
    lift = post.weight[:, :, 0, 0, 0] @ basis  # [K, k]: a k-channel latent → the wide decoder's input
    offset = post.weight[:, :, 0, 0, 0] @ mean + post.bias  # [K]
    # The constant offset goes in before the zero-padded convolution where it can (exactly when k = K) ...
    vae.post_quant_conv.bias.copy_(torch.linalg.lstsq(lift, offset[:, None]).solution[:, 0])
    rest = offset - lift @ vae.post_quant_conv.bias  # ... the rest as the convolution's bias
    vae.decoder.conv_in.weight.copy_(torch.einsum("cj...,jk->ck...", first.weight, lift))
    vae.decoder.conv_in.bias.copy_(first.bias + torch.einsum("cj...,j->c", first.weight, rest))


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
    from vidpost.evaluation.ceiling import reconstruct
    from vidpost.shapes.splits import heldout_prompts, render_heldout
    from vidpost.shapes.verifier import ATTRIBUTES, verify_batch

    specs, clips = render_heldout(heldout_prompts(), num_frames=NUM_FRAMES, height=HEIGHT, width=WIDTH)
    res = verify_batch(reconstruct(vae, clips), specs)
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
