"""Build the Shapes world models — the embedded default — from scratch with vidpost's own commands.

    vidpost shapes models --out assets/shapes [--stage vae|init|data|base|sft|all] [--quick]

Stages (each writes its folder and is skipped when that folder is complete, so the command resumes):
1. `vae`   — a miniature `AutoencoderKLWan` (4× spatial and, by default, 2× temporal compression and 4 latent
             channels; `--vae-spatial 8` / `--vae-temporal 4` / `--vae-channels 16` for the coarser or wider ones)
             trained as an autoencoder on procedurally rendered clips (`vidpost.pipelines.shapes_vae`, which
             documents the losses and what did not work), in phases that each write a checkpoint every 100 steps
             and resume from it, each started from the previous phase's weights: `vae-t4/` — a 4×-temporal VAE:
             single frames (1500 steps, batch 16), then 17-frame clips (800 steps, batch 4), then 300 steps with
             an edge term; `vae-t4-edge/` — 600 more clip steps and 400 edge steps (edge weight 2); `vae-t2/` —
             the 2×-temporal VAE (every tensor whose name and shape match), 500 clip and 200 edge steps; `vae/` —
             its latents narrowed to 4 channels (`shapes_vae.narrow_latents`: their leading principal
             components), 600 clip and 300 edge steps. Only the phases after the latest finished folder run (copy
             a committed one into the work folder to start there); with `--vae-temporal 4 --vae-channels 16` the
             first phase writes `vae/` and is the only one. `--vae-from FOLDER` takes a trained VAE instead. The
             report records the verifier's success on its reconstructions of held-out clips: the ceiling for every
             model built on it (`vidpost shapes ceiling` measures it on the held-out split).
             Why 4 channels: the transformer's tokens cover 1×4×4 latent cells, so it predicts 16·channels values
             per token through a linear output projection from its 128-wide hidden state; with 16 channels (256
             values) most of its error lay outside what that projection can reach, and it never denoised.
2. `init`  — assembles a complete diffusers `WanPipeline` folder: the trained VAE, a frozen randomly initialised
             UMT5 encoder with a tokenizer built in memory over the Shapes vocabulary, and a randomly initialised
             `WanTransformer3DModel` whose patches cover 16×16 pixels whatever the VAE (1×4×4 latent cells with a
             4× VAE, 1×2×2 with an 8× one): 4×4 tokens per latent frame, 9×4×4 per 17-frame clip with the 2×
             temporal VAE (5×4×4 with a 4× one).
3. `data`  — exports the Shapes train split as mp4 + manifest (the same format the SFT stage reads for real data).
4. `base`  — "pretraining": `vidpost sft` with full fine-tuning of the random transformer on the *noisy* captions
             (some wrong, vague or missing, like web alt-text) → `base/`, a complete model folder.
5. `sft`   — `vidpost sft` on the clean canonical captions starting from `base/`, in three phases: `sft.yaml`
             (9000 steps, unshifted logit-normal timesteps), then `sft-motion.yaml` (4500 steps with the
             timesteps shifted like the sampler's, shift 3, which is what teaches direction of motion), then
             `sft-motion2.yaml` (4000 more such steps with the learning rate decayed) → `sft/`.
The SFT configs of steps 4–5 live in configs/shapes/{pretrain,sft,sft-motion,sft-motion2}.yaml; this command only
sets paths.
Each SFT phase resumes from its latest checkpoint (`<work>/<config>/checkpoints`); a finished phase is not rerun, and
a phase folder that started from another model than the current one (a rebuilt VAE or base) is discarded
(`run_phase`). A stage whose output folder (`<out>/base`, `<out>/sft`) exists is skipped: delete it to rebuild it
from the work folder (`make shapes-models` does), and delete the work folder to start from scratch.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vidpost.config import ArgumentParser
from vidpost.outputs import write_text
from vidpost.pipelines.shapes_vae import ARCHITECTURES, HEIGHT, NUM_FRAMES, WIDTH, train_vae
from vidpost.training.runner import ExitCode

ROOT = Path(__file__).resolve().parents[1]


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


def build_init(vae_dir: Path, out: Path, *, seed: int = 0) -> Path:
    """A complete WanPipeline folder: trained VAE + frozen random UMT5 + random transformer (6 blocks, 4×32; every
    patch covers 16×16 pixels of a frame, so a 64×64 frame is 4×4 tokens whatever the VAE)."""
    from diffusers import AutoencoderKLWan

    from vidpost.models import WanAdapter

    vae = AutoencoderKLWan.from_pretrained(vae_dir)
    patch = 16 // int(vae.config.scale_factor_spatial)  # every token covers 16×16 pixels
    adapter = WanAdapter.tiny(
        seed,
        latent_channels=int(vae.config.z_dim),
        words=shapes_vocabulary(),
        num_layers=6,
        num_heads=4,
        head_dim=32,
        ffn_dim=512,
        text_dim=64,
        max_sequence_length=32,
        rope_max_seq_len=64,
        patch_size=(1, patch, patch),
    )
    adapter.vae = vae
    adapter.default_shift = 3.0
    adapter.save_pretrained(out)
    _write_generation_defaults(out)
    return out


def _write_generation_defaults(model_dir: Path) -> None:
    f = model_dir / "vidpost.json"
    cfg = json.loads(f.read_text()) if f.exists() else {}
    cfg["generation"] = {"num_frames": NUM_FRAMES, "height": HEIGHT, "width": WIDTH, "steps": 20, "fps": 8}
    write_text(f, json.dumps(cfg, indent=2) + "\n")


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
        write_text(tmp / shard.with_suffix(".json").name, json.dumps(meta) + "\n")
    for name in ("summary.json", "bad_videos.jsonl"):
        if (src / name).exists():
            shutil.copy(src / name, tmp / name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.replace(dst)


def fingerprint(model_dir: Path) -> str:
    """sha256 of a model folder's weights (its transformer's and VAE's, or a VAE folder's own) → 16 hex digits."""
    import hashlib

    h = hashlib.sha256()
    names = ["transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    for name in [*names, "diffusion_pytorch_model.safetensors"]:
        f = Path(model_dir) / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def vae_architecture(vae_dir: Path) -> tuple[int, int, int]:
    """(spatial, temporal) compression and latent channels of a VAE folder's `AutoencoderKLWan` config."""
    cfg = json.loads((Path(vae_dir) / "config.json").read_text())
    return int(cfg.get("scale_factor_spatial", 8)), int(cfg.get("scale_factor_temporal", 4)), int(cfg.get("z_dim", 16))


def discard_stale(phase_dir: Path, start: Path) -> None:
    """Remove a phase folder whose `start.json` records another starting model than `start` (a rebuilt VAE or
    base): its checkpoints, cache and final model belong to that other model."""
    stamp = phase_dir / "start.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("start_from") != fingerprint(start):
        print(f"shapes models: {phase_dir} started from another model; running the phase again", file=sys.stderr)
        shutil.rmtree(phase_dir)


def run_phase(config: str, start: Path, work: Path, overrides: list[str]) -> Path:
    """One SFT phase of a stage (`configs/shapes/<config>.yaml`) from the model `start` → its final model folder.

    `<work>/<config>/start.json` records the fingerprint of the model the phase started from: a folder started
    from another model is discarded (`discard_stale`) and the phase runs again; a finished phase
    (`final/phase.json` with the same fingerprint, e.g. a model folder copied there) is not rerun. Otherwise
    `vidpost sft` resumes the phase from its latest checkpoint."""
    phase_dir, start_fp = work / config, fingerprint(start)
    discard_stale(phase_dir, start)
    done = phase_dir / "final" / "phase.json"
    if done.exists() and json.loads(done.read_text()).get("start_from") == start_fp:
        return phase_dir / "final"
    phase_dir.mkdir(parents=True, exist_ok=True)
    stamp = json.dumps({"config": config, "start_from": start_fp}) + "\n"
    write_text(phase_dir / "start.json", stamp)
    cfg = ROOT / "configs" / "shapes" / f"{config}.yaml"
    final = run_sft(cfg, [f"output_dir={phase_dir}", f"model.path={start}", *overrides])
    write_text(final / "phase.json", stamp)
    return final


def build_vae(
    work: Path,
    *,
    spatial: int,
    temporal: int,
    steps: int,
    image_steps: int,
    sharpen_steps: int,
    channels: int = 16,
    quick: bool = False,
) -> Path:
    """Stage 1 of the module doc → `work/vae`. Each phase is skipped when its folder (or a later phase's) is
    complete and resumes from its checkpoint otherwise."""
    n = (lambda k: 3) if quick else (lambda k: k)
    # (folder, clip steps, edge steps, seed, temporal, channels), each phase started from the previous one's
    # weights: more edge training, the 2x-temporal VAE, then its latents narrowed to `channels`
    phases = [("vae-t4-edge", 600, 400, 5, 4, 16), ("vae-t2", 500, 200, 7, temporal, 16)] if temporal != 4 else []
    if channels != 16:
        phases.append(("vae-z", 600, 300, 9, temporal, channels))
    if phases:  # the last phase writes `vae/`
        phases[-1] = ("vae", *phases[-1][1:])
    names = ["vae-t4" if phases else "vae", *(row[0] for row in phases)]
    latest = max((i for i, name in enumerate(names) if (work / name / "config.json").exists()), default=None)
    if latest is None:
        train_vae(work / names[0], steps=steps, image_steps=image_steps, sharpen_steps=sharpen_steps, spatial=spatial)
        latest = 0
    start = work / names[latest]
    for name, clip_steps, edge_steps, seed, t, z in phases[latest:]:
        train_vae(
            work / name,
            steps=n(clip_steps),
            sharpen_steps=n(edge_steps),
            edge_weight=2.0,
            seed=seed,
            start_from=start,
            spatial=spatial,
            temporal=t,
            z_dim=z,
        )
        start = work / name
    return start


def run_sft(config: Path, overrides: list[str]) -> Path:
    from vidpost.config import load_config
    from vidpost.pipelines.sft import SFTConfig, train

    return train(load_config(SFTConfig, config, overrides), resume="latest").final


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost shapes models", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "assets" / "shapes")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "shapes-models", help="data, caches and logs")
    p.add_argument("--stage", choices=["vae", "init", "data", "base", "sft", "all"], default="all")
    p.add_argument("--vae-steps", type=int, default=800, help="first VAE phase: steps on 17-frame clips (batch 4)")
    p.add_argument("--vae-image-steps", type=int, default=1500, help="first VAE phase: single-frame steps first")
    p.add_argument("--vae-sharpen-steps", type=int, default=300, help="first VAE phase: last steps with edge loss")
    p.add_argument(
        "--vae-spatial",
        type=int,
        choices=[4, 8],
        default=4,
        help="VAE spatial compression (default 4; 8 needs --vae-temporal 4)",
    )
    p.add_argument("--vae-temporal", type=int, choices=[2, 4], default=2, help="VAE temporal compression (default 2)")
    p.add_argument(
        "--vae-channels",
        type=int,
        choices=[4, 8, 16],
        default=4,
        help="VAE latent channels (default 4: a token's 1x4x4 cells are 64 values, which the 128-wide transformer "
        "can predict; 16 are 256)",
    )
    p.add_argument("--vae-from", type=Path, help="a trained VAE folder to use instead of training one")
    p.add_argument("--clips", type=int, help="training clips to export (default 4000; 64 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny step counts (a smoke run, not a usable model)")
    p.add_argument("overrides", nargs="*", help="dotted overrides passed to both SFT runs")
    args = p.parse_args(argv)
    out, work = args.out, args.work
    stages = ["vae", "init", "data", "base", "sft"] if args.stage == "all" else [args.stage]
    quick = ["train.max_steps=3", "checkpoint.every=0", "validation.max_prompts=2", "validation.steps=2"]
    extra = (quick if args.quick else []) + args.overrides
    t0 = time.time()
    arch = (args.vae_spatial, args.vae_temporal, args.vae_channels)
    if arch[:2] not in ARCHITECTURES:
        p.error(f"--vae-spatial/--vae-temporal must be one of {sorted(ARCHITECTURES)}")
    if args.vae_from is not None:
        if not (args.vae_from / "config.json").is_file():
            p.error(f"--vae-from {args.vae_from}: no VAE there (config.json missing)")
        if vae_architecture(args.vae_from) != arch:
            p.error(
                f"--vae-from {args.vae_from} is a {vae_architecture(args.vae_from)} VAE, not {arch} (--vae-spatial/--vae-temporal/--vae-channels)"
            )
    vae_dir = work / "vae"
    if (vae_dir / "config.json").exists():
        if vae_architecture(vae_dir) != arch:
            p.error(
                f"{vae_dir} is a {vae_architecture(vae_dir)} VAE, not {arch}: pass its flags or use another --work"
            )
        if args.vae_from is not None and fingerprint(args.vae_from) != fingerprint(vae_dir):
            p.error(f"{vae_dir} holds another VAE than --vae-from {args.vae_from}: use another --work")
    if "vae" in stages and not (vae_dir / "config.json").exists():
        if args.vae_from is not None:
            shutil.copytree(args.vae_from, vae_dir)
        else:
            build_vae(
                work,
                spatial=args.vae_spatial,
                temporal=args.vae_temporal,
                steps=3 if args.quick else args.vae_steps,
                image_steps=3 if args.quick else args.vae_image_steps,
                sharpen_steps=3 if args.quick else args.vae_sharpen_steps,
                channels=args.vae_channels,
                quick=args.quick,
            )
    init = work / "init"
    if "init" in stages and (init / "model_index.json").exists() and fingerprint(init / "vae") != fingerprint(vae_dir):
        print(f"shapes models: {init} holds another VAE than {vae_dir}; assembling it again", file=sys.stderr)
        shutil.rmtree(init)
    if "init" in stages and not (init / "model_index.json").exists():
        build_init(vae_dir, init)
    if "data" in stages and not (work / "data" / "manifest.jsonl").exists():
        export_data(work / "data", args.clips or (64 if args.quick else 4000))
    manifest = work / "data" / "manifest.jsonl"
    phases = {"base": (["pretrain"], init), "sft": (["sft", "sft-motion", "sft-motion2"], out / "base")}
    for stage, (configs, start_from) in phases.items():
        if stage in stages and not (out / stage / "model_index.json").exists():
            pretrain_cache, sft_cache = work / "pretrain" / "cache", work / "sft" / "cache"
            final = start_from
            for i, config in enumerate(configs):  # each phase continues from the previous one's weights
                discard_stale(work / config, final)
                if stage == "sft" and i == 0 and (pretrain_cache / "summary.json").exists() and not sft_cache.exists():
                    recaption_cache(pretrain_cache, sft_cache, start_from, manifest, "caption")
                cache = f"data.cache_dir={work / configs[0] / 'cache'}"  # the stage's phases share one cache
                final = run_phase(config, final, work, [f"data.manifest={manifest}", cache, *extra])
            shutil.rmtree(out / stage, ignore_errors=True)
            shutil.copytree(final, out / stage)
            (out / stage / "phase.json").unlink(missing_ok=True)
            _write_generation_defaults(out / stage)
    print(f"shapes models: done in {(time.time() - t0) / 60:.1f} min -> {out}", file=sys.stderr)
    return ExitCode.OK


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
