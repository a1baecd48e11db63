"""Sampling command: load → sample → mp4 + PNG contact sheet (+ a JSON of the settings) per prompt.

    python generate.py --prompt "a red circle moves to the right" --out outputs/red.mp4
    python generate.py --prompts-file prompts.txt --model /path/to/Wan2.1-T2V-1.3B-Diffusers --out outputs/batch/
    vidpost generate ...   (same arguments)

Each prompt i is generated from its own noise, drawn with seed + i (`vidpost.seeding`), so a prompt's video does not depend on which
other prompts share its batch. Sizes are checked before sampling starts: a frame count or resolution the model
cannot generate exactly is an error naming the nearest valid values. Defaults for size and steps come from the
model's `vidpost.json` when it has them (the Shapes world models do), else from the Wan 480p recipe.

`--enhance` (or `--enhancer PATH`) first rewrites the prompts with the prompt enhancer (`vidpost enhance`); the
video is generated from the rewrite, its JSON records both prompts, and file names and labels use the original.

Inference optimisation (`vidpost.models.attention`): `--attention NAME` picks the attention implementation of the
video self-attention layers (`sdpa` default, `flash`, or any registered one), `--attention-layers 0,2` limits it to
those layers (the others keep SDPA), `--eav W` turns on Enhance-A-Video with weight W (`--eav-steps`,
`--eav-layers`, `--eav-branches` restrict it). `--attention-config FILE` reads the same settings from the
`attention:` section of a YAML file (an `AttentionConfig`); the flags override it.

    python generate.py --prompt "a red circle moves to the right" --eav 4 --eav-steps 0:10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vidpost.config import (
    ArgumentParser,
    from_dict,
    nonnegative_float,
    parse_yaml,
    positive_int,
    read_yaml,
    to_dict,
)
from vidpost.evaluation.generate import default_dtype, sample_batches
from vidpost.evaluation.prompts import slug
from vidpost.evaluation.settings import resolve_settings, user_settings
from vidpost.media.video_io import contact_sheet, write_video
from vidpost.models import DEFAULT_MODEL, load, resolve_model_path
from vidpost.models.attention import AttentionConfig, install_attention
from vidpost.models.base import DTYPES
from vidpost.outputs import write_json
from vidpost.seeding import prompt_seed, video_seed


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="generate.py", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    src.add_argument("--prompts-file", type=Path, help="text file, one prompt per line (blank lines and # skipped)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="diffusers-format model directory or preset name")
    p.add_argument("--lora", help="folder with a diffusers-format LoRA to apply (as the stages write it)")
    p.add_argument(
        "--num-frames",
        type=int,
        help="frames to generate: (the VAE's temporal factor)·k+1, i.e. 4k+1 for Wan / HunyuanVideo, 2k+1 for the "
        "Shapes models",
    )
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--guidance", type=nonnegative_float, help="guidance scale (model default when omitted)")
    p.add_argument("--shift", type=float, help="flow-matching schedule shift (model default when omitted)")
    p.add_argument(
        "--keyframe",
        help="a latent frame index generated first, then the clip around it, or 'off' (model default when omitted)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--fps", type=float, help="frame rate of the written mp4")
    p.add_argument("--batch-size", type=positive_int, default=4, help="prompts sampled together")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="transformer dtype (bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--out", type=Path, default=Path("outputs/video.mp4"), help="mp4 path, or a folder for several")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--enhance", action="store_true", help="rewrite the prompts with the prompt enhancer first")
    p.add_argument(
        "--enhancer", help="enhancer LLM folder or .gguf (implies --enhance; default: SmolLM2-135M-Instruct)"
    )
    add_attention_arguments(p)
    return p


CLI_CACHE_METHODS = ("none", "first_block", "taylorseer")
"""the step caches a flag can turn on: those that need nothing measured per model (MagCache needs its ratios)"""


def add_attention_arguments(p: argparse.ArgumentParser) -> None:
    """The inference-optimisation flags (shared by the commands that sample)."""
    g = p.add_argument_group("inference optimisation (attention processors, Enhance-A-Video)")
    g.add_argument("--attention", help="attention implementation of the video self-attention layers (default sdpa)")
    g.add_argument("--attention-layers", help="comma-separated layers that use --attention (default: all)")
    g.add_argument(
        "--attention-option", action="append", default=[], help="KEY=VALUE option for the implementation (repeat)"
    )
    g.add_argument("--attention-config", type=Path, help="YAML file whose `attention:` section is an AttentionConfig")
    g.add_argument("--eav", type=float, metavar="WEIGHT", help="Enhance-A-Video with this weight (e.g. 4)")
    g.add_argument("--eav-layers", help="comma-separated layers Enhance-A-Video applies to (default: all)")
    g.add_argument("--eav-steps", help="START:END — enhance denoising steps in [START, END) (END may be empty)")
    g.add_argument("--eav-branches", help="CFG branches to enhance: cond, uncond or cond,uncond (default both)")
    g.add_argument(
        "--cache",
        choices=CLI_CACHE_METHODS,
        help="step caching with diffusers' hooks (first_block: reuse the later blocks when the first barely changed;"
        " taylorseer: forecast block outputs). MagCache needs the model's magnitude ratios: an inference config's"
        " cache.options.mag_ratios",
    )
    g.add_argument(
        "--cache-threshold", type=nonnegative_float, help="first_block relative-change threshold (default 0.05)"
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    par = p.add_argument_group(
        "sequence parallelism (launch N processes: torchrun --nproc_per_node N generate.py ...)"
    )
    par.add_argument(
        "--sp", type=positive_int, default=1, help="Ulysses degree: processes that split each video's tokens"
    )
    par.add_argument(
        "--ring", type=positive_int, default=1, help="ring-attention degree (GPU attention backends only)"
    )


def inference_settings(args: argparse.Namespace) -> dict:
    """Step caching and torch.compile from the flags (`vidpost.models.inference`), {} when none was given."""
    out: dict = {}
    if getattr(args, "cache", None) and args.cache != "none":
        out["cache"] = {"method": args.cache}
        if args.cache_threshold is not None:
            out["cache"]["threshold"] = args.cache_threshold
    if getattr(args, "compile", False):
        out["compile"] = True
    return out


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {text!r}") from None


def attention_config(args: argparse.Namespace) -> AttentionConfig | None:
    """The AttentionConfig from --attention-config and the flags (flags win); None when nothing was asked for."""
    data: dict = {}
    if args.attention_config is not None:
        raw = read_yaml(args.attention_config)
        unknown = [k for k in raw if k != "attention"]
        if unknown:
            raise ValueError(f"{args.attention_config}: unknown top-level key '{unknown[0]}' (expected 'attention')")
        data = dict(raw.get("attention") or {})
    if args.attention:
        data["implementation"] = args.attention
    if args.attention_layers:
        data["layers"] = _int_list(args.attention_layers, "--attention-layers")
    for opt in args.attention_option:
        if "=" not in opt:
            raise ValueError(f"--attention-option {opt!r} must look like KEY=VALUE")
        key, value = opt.split("=", 1)
        data.setdefault("options", {})[key.strip()] = parse_yaml(value, f"--attention-option {opt!r}")
    eav_flags = (args.eav_layers, args.eav_steps, args.eav_branches)
    if args.eav is not None or any(f is not None for f in eav_flags):
        eav = dict(data.get("eav") or {})
        if args.eav is not None:
            eav["weight"] = args.eav
        if args.eav_layers:
            eav["layers"] = _int_list(args.eav_layers, "--eav-layers")
        if args.eav_steps:
            start, sep, end = args.eav_steps.partition(":")
            if not sep:
                raise ValueError(f"--eav-steps expects START:END, got {args.eav_steps!r}")
            eav["step_start"] = int(start or 0)
            eav["step_end"] = int(end) if end.strip() else None
        if args.eav_branches:
            eav["branches"] = [b.strip() for b in args.eav_branches.split(",") if b.strip()]
        data["eav"] = eav
    if not data:
        return None
    return from_dict(AttentionConfig, data, prefix="attention.")


def enhance_prompts(prompts: list[str], enhancer: str | None, device: str) -> list[dict]:
    """Rewrite the prompts with the enhancer (`vidpost enhance`), then free it before the video model loads."""
    import gc

    from vidpost.enhance import Rewriter

    rewriter = Rewriter.from_pretrained(enhancer, device=device)
    results = rewriter.rewrite(prompts, progress=True)
    del rewriter
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    for r in results:
        note = f" (kept: {r.fallback_reason})" if r.fallback_reason else ""
        print(f"enhanced: {r.original!r} → {r.text!r}{note}", file=sys.stderr)
    return [{"enhancer": enhancer or "default (SmolLM2-135M-Instruct)", **r.to_dict()} for r in results]


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt:
        prompts = [p.strip() for p in args.prompt]
    else:
        if not args.prompts_file.exists():
            raise ValueError(f"prompts file {args.prompts_file} does not exist")
        lines = args.prompts_file.read_text().splitlines()
        prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts or any(not p for p in prompts):
        raise ValueError("no prompts given (empty prompt or empty prompts file)")
    return prompts


def output_paths(out: Path, prompts: list[str]) -> list[Path]:
    if len(prompts) == 1 and out.suffix in (".mp4", ".gif"):
        return [out]
    folder = out.with_suffix("") if out.suffix in (".mp4", ".gif") else out
    return [folder / f"{i:03d}_{slug(p)}.mp4" for i, p in enumerate(prompts)]


def parallel_layout(args: argparse.Namespace) -> Any:
    """The sequence-parallel layout of `--sp` / `--ring` (`vidpost.training.parallel`); starts the process group
    from torchrun's environment when it is not running yet."""
    import os

    from vidpost.training.parallel import ParallelConfig, make_layout

    cfg = ParallelConfig(sp_degree=args.sp, ring_degree=args.ring)
    if cfg.degree == 1:
        return make_layout(cfg)
    import torch.distributed as dist

    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            raise ValueError(
                f"--sp {args.sp} --ring {args.ring} needs {cfg.degree} processes: "
                f"torchrun --nproc_per_node {cfg.degree} generate.py --sp {args.sp} ..."
            )
        if str(args.device).startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            args.device = f"cuda:{local}"
        dist.init_process_group("nccl" if str(args.device).startswith("cuda") else "gloo")
    return make_layout(cfg, dist.get_world_size(), dist.get_rank(), args.device)


def generate(args: argparse.Namespace) -> list[Path]:
    layout = parallel_layout(args)
    writes = layout.rank == 0  # under sequence parallelism every rank samples, the first one writes
    originals = prompts = read_prompts(args)
    model_dir = resolve_model_path(args.model)
    enhanced = None
    if args.enhance or args.enhancer:
        enhanced = enhance_prompts(prompts, args.enhancer, args.device)
        prompts = [e["text"] for e in enhanced]
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(args.device)
    t0 = time.time()
    attention = attention_config(args)
    adapter = load(model_dir, dtype=dtype, device=args.device, lora=args.lora)
    if attention is not None:
        install_attention(adapter, attention)
    settings = resolve_settings(model_dir, adapter, **user_settings(args))
    extra = inference_settings(args)
    if extra:
        from vidpost.models.inference import apply_inference

        apply_inference(adapter, extra, num_inference_steps=settings.steps)
    if layout.degree > 1:
        from vidpost.training.parallel import check_tokens, enable_sequence_parallel

        check_tokens(adapter, adapter.latent_shape(1, settings.num_frames, settings.height, settings.width), layout)
        enable_sequence_parallel(adapter, layout)
    print(f"loaded {adapter.family} model from {model_dir} in {time.time() - t0:.1f}s", file=sys.stderr)
    paths = output_paths(args.out, originals)
    seeds = [video_seed(prompt_seed(None, args.seed, i), 0) for i in range(len(prompts))]
    videos = []
    batches = sample_batches(
        adapter, prompts, seeds, settings, batch_size=args.batch_size, step_progress=writes and not args.no_progress
    )
    for start, out, seconds in batches:
        if not writes:
            continue
        dt = seconds / len(out)
        for j, video in enumerate(out.cpu()):
            i = start + j
            path = paths[i]
            write_video(path, video, fps=settings.fps)
            contact_sheet(video, path.with_suffix(".png"), labels=[originals[i]])
            meta = {"prompt": prompts[i], "seed": seeds[i], "model": str(model_dir), "lora": args.lora}
            if enhanced is not None:
                meta |= {"original_prompt": originals[i], "enhance": enhanced[i]}
            meta |= settings.record()
            if attention is not None:
                meta["attention"] = to_dict(attention)
            if extra:
                meta["inference"] = extra
            if layout.degree > 1:
                meta["parallel"] = {"sp_degree": layout.sp, "ring_degree": layout.ring}
            meta["seconds_per_video"] = round(dt, 3)
            write_json(path.with_suffix(".json"), meta)
            videos.append(video)
            print(f"wrote {path}", file=sys.stderr)
    if len(prompts) > 1 and writes:
        contact_sheet(videos, paths[0].parent / "contact_sheet.png", labels=originals)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        generate(args)
    except (ValueError, NotImplementedError) as e:  # user mistakes: bad size, missing model or enhancer, empty prompts
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
