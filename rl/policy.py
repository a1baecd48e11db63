"""The policy an RL trainer aligns: the model loaded, its LoRA added (fresh or continued from a diffusers LoRA) or
its transformer unfrozen, trainable weights in float32, and the frozen reference for a full fine-tune's KL."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from vidpost.models import VideoModelAdapter, load, resolve_model_path
from vidpost.models.base import DTYPES
from vidpost.sections import LoraConfig
from vidpost.training.lora import add_lora
from vidpost.training.sampling import video_size_and_shift

from .rollout import RolloutConfig

__all__ = ["Policy", "PolicyModelConfig", "load_lora_init", "load_policy"]


@dataclass
class PolicyModelConfig:
    path: str = "shapes"
    """diffusers-format model directory or preset to align"""
    lora_init: str = ""
    """an existing diffusers LoRA folder to continue from (empty: a fresh LoRA when lora.enabled)"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    gradient_checkpointing: bool = False


@dataclass
class Policy:
    adapter: VideoModelAdapter
    """the model, with its LoRA or its unfrozen transformer (trainable weights in float32)"""
    size: tuple[int, int, int]
    """the rollout size (frames, height, width)"""
    shift: float
    """the sampling shift"""
    reference: torch.nn.Module | None
    """the frozen reference transformer for the KL of a full fine-tune, else None"""


def load_lora_init(adapter: VideoModelAdapter, folder: str) -> None:
    """Continue from an existing diffusers LoRA: its weights go into the freshly added adapter."""
    from safetensors.torch import load_file

    f = Path(folder) / "pytorch_lora_weights.safetensors"
    if not f.exists():
        raise ValueError(f"model.lora_init: {f} does not exist")
    state = load_file(str(f))
    params = dict(adapter.transformer.named_parameters())
    loaded = 0
    for key, value in state.items():
        name = key.removeprefix("transformer.")
        name = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        if name not in params:
            raise ValueError(f"model.lora_init: {key} has no matching LoRA parameter (rank/targets differ?)")
        with torch.no_grad():
            params[name].copy_(value.to(params[name].dtype))
        loaded += 1
    print(f"lora_init: loaded {loaded} tensors from {f}", file=sys.stderr)


def load_policy(
    model: PolicyModelConfig,
    lora: LoraConfig,
    rollout: RolloutConfig,
    device: torch.device | str,
    *,
    kl_reference: bool = False,
) -> Policy:
    """The model to align, ready to train (see `Policy`); `kl_reference`: keep a frozen copy of the transformer as
    the KL reference when the whole transformer trains (a LoRA's reference is the model with its adapters off)."""
    dtype = DTYPES[model.dtype]
    model_dir = resolve_model_path(model.path)
    adapter = load(model_dir, dtype=dtype, device=device)
    size, shift = video_size_and_shift(adapter, model_dir, rollout)
    transformer = adapter.transformer
    reference = None
    if lora.enabled:
        add_lora(adapter, lora)
        if model.lora_init:
            load_lora_init(adapter, model.lora_init)
    else:
        if kl_reference:
            reference = copy.deepcopy(transformer).requires_grad_(False).eval()
        transformer.requires_grad_(True)
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if model.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return Policy(adapter, size, shift, reference)
