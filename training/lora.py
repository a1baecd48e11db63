"""LoRA through peft (per-family target modules) and the diffusers-format export of a trained transformer."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from vidpost.models import VideoModelAdapter, resolve_model_path
from vidpost.training.config import LoraConfig


def add_lora(adapter: VideoModelAdapter, cfg: LoraConfig) -> None:
    from peft import LoraConfig as PeftLoraConfig

    targets = list(cfg.target_modules or adapter.lora_target_modules)
    adapter.transformer.add_adapter(
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


def export(adapter: VideoModelAdapter, cfg: Any, path: Path) -> Path:
    """LoRA → diffusers LoRA file; full → complete diffusers model dir (with the frozen parts of the base).
    `cfg` is any stage config with `lora.enabled` and `model.path` (SFT, GRPO)."""
    if path.exists():
        shutil.rmtree(path)
    if cfg.lora.enabled:
        adapter.save_lora(path, lora_state_dict(adapter.transformer))
        (path / "base_model.txt").write_text(str(resolve_model_path(cfg.model.path).resolve()) + "\n")
    else:
        adapter.save_pretrained(path)
    return path
