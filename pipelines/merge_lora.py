"""`vidpost merge-lora --base MODEL --lora DIR --out DIR`: fold a diffusers-format LoRA into the transformer.

Writes a complete diffusers model folder (the base's VAE, text encoders and tokenizers, the merged transformer)
that loads with `WanTransformer3DModel.from_pretrained` / `WanPipeline.from_pretrained` and needs no peft.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vidpost.config import ArgumentParser
from vidpost.models import load
from vidpost.training.runner import ExitCode


def merge_lora(base: str, lora: str | Path, out: str | Path, scale: float = 1.0) -> Path:
    adapter = load(base, lora=lora)
    adapter.transformer.fuse_lora(lora_scale=scale)
    adapter.transformer.unload_lora()
    return adapter.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost merge-lora", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="base model folder or preset")
    p.add_argument("--lora", required=True, help="folder with pytorch_lora_weights.safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--scale", type=float, default=1.0)
    args = p.parse_args(argv)
    try:
        path = merge_lora(args.base, args.lora, args.out, args.scale)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    print(f"merged model written to {path}", file=sys.stderr)
    return ExitCode.OK


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
