"""LoRA through peft (per-family target modules), float32 trainable weights, and the diffusers-format export of a
trained transformer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vidpost.models import VideoModelAdapter, resolve_model_path
from vidpost.models.provenance import stamp_lora
from vidpost.outputs import atomic_dir
from vidpost.sections import LoraConfig
from vidpost.training.ema import EMA


def add_lora(adapter: VideoModelAdapter, cfg: LoraConfig) -> None:
    add_lora_to(adapter.transformer, cfg, list(cfg.target_modules or adapter.lora_target_modules))


def add_lora_to(transformer: torch.nn.Module, cfg: LoraConfig, targets: list[str]) -> None:
    """A fresh LoRA (peft, zero-initialised B) on `targets` of a diffusers transformer."""
    from peft import LoraConfig as PeftLoraConfig

    transformer.add_adapter(
        PeftLoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            init_lora_weights=True,
            target_modules=targets,
        )
    )


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}


def export(adapter: VideoModelAdapter, cfg: Any, path: Path, ema: EMA | None = None) -> Path:
    """LoRA → diffusers LoRA file, stamped with the base it was trained on (`models.provenance`); full → complete
    diffusers model dir (with the frozen parts of the base).
    `cfg` is any stage config with `lora.enabled` and `model.path` (SFT, GRPO). With `ema`, its weights are copied
    into the transformer first (and exported)."""
    if ema is not None:
        ema.copy_to(adapter.transformer)
    with atomic_dir(path, what=f"the {'LoRA' if cfg.lora.enabled else 'model'} folder {path}") as tmp:
        if cfg.lora.enabled:
            base = resolve_model_path(cfg.model.path).resolve()
            adapter.save_lora(tmp, lora_state_dict(adapter.transformer))
            stamp_lora(tmp, base)  # the base's name and fingerprint in the file's header
            (tmp / "base_model.txt").write_text(str(base) + "\n")
        else:
            adapter.save_pretrained(tmp)
    return path
