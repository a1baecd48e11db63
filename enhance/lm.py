"""The language-model side of the prompt rewriter's trainers (Stage 3, `vidpost enhance train
sft | grpo`): the model, LoRA and data config sections, the policy set-up (LoRA or full, trainable weights in
float32) and the export of `final/` (LoRA merged, tokenizer, `rewriter.yaml`). The rewriter's own pieces (chat
rendering, token log-probs, sampling, its rewards) are in `vidpost.enhance.train`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from vidpost.config import NonNegativeFloat
from vidpost.models.base import DTYPES, upcast_trainable
from vidpost.sections import LoraConfig


@dataclass
class LMConfig:
    path: str = ""
    """causal LM folder (with a chat template) or .gguf file to train; empty: the default SmolLM2-135M-Instruct;
    "miniature:shapes": a small Llama built from random weights in `output_dir/init` (`vidpost.enhance.miniature`)"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """storage dtype of the frozen weights (LoRA weights stay float32)"""
    device: str = ""
    """cuda or cpu; empty: cuda when available"""
    gradient_checkpointing: bool = False


@dataclass
class PairsConfig:
    path: str = "shapes-train"
    """JSONL of {"prompt", "target"} (sft) or {"prompt", "reward_prompt"} (grpo; reward_prompt optional), or
    "shapes-train": the Shapes pairs of `vidpost enhance train data`, built in memory"""
    shapes_n: int = 2000
    """training scenes of "shapes-train" (never held-out scenes)"""
    shapes_paraphrases: int = 1
    """extra user-style paraphrases per scene of "shapes-train\""""
    max_length: int = 2048
    """SFT: pairs whose chat + target is longer (in tokens) are skipped with a warning"""


@dataclass
class LMLoraConfig(LoraConfig):
    """The rewriter's LoRA (merged into the weights at export): alpha 32 by default; dropout for SFT only (GRPO needs
    a deterministic policy and refuses dropout > 0); `target_modules` null: every linear layer but the output head."""

    alpha: NonNegativeFloat = 32.0


def load_rows(cfg: PairsConfig, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The training rows: a JSONL file with the `required` keys, or the in-memory Shapes pairs."""
    from vidpost.enhance.train import read_pairs, shapes_pairs

    if cfg.path == "shapes-train":
        return shapes_pairs(cfg.shapes_n, paraphrases=cfg.shapes_paraphrases)
    return read_pairs(cfg.path, required)


def setup_model(model_cfg: LMConfig, lora_cfg: LMLoraConfig, rewriter_settings: dict[str, Any]):
    """(policy model in train mode, the rewriter around it, trainable parameters)."""
    from vidpost.enhance.train import add_lora, load_lm, make_rewriter

    device = torch.device(model_cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer = load_lm(model_cfg.path, dtype=DTYPES[model_cfg.dtype], device=device)
    rewriter = make_rewriter(model, tokenizer, rewriter_settings)  # checks the chat template and the settings
    if lora_cfg.enabled:
        model = add_lora(
            model,
            rank=lora_cfg.rank,
            alpha=lora_cfg.alpha,
            dropout=lora_cfg.dropout,
            target_modules=lora_cfg.target_modules,
        )
    else:
        model.requires_grad_(True)
    upcast_trainable(model)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if lora_cfg.enabled:
            model.enable_input_require_grads()
    rewriter.model = model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, rewriter, params


def export_lm(model: torch.nn.Module, rewriter: Any, path: Path) -> Path:
    """`path`: the model with its LoRA merged, the tokenizer and `rewriter.yaml` (`Rewriter.from_pretrained` loads
    it)."""
    from vidpost.enhance.train import export_rewriter

    return export_rewriter(model, rewriter.tokenizer, rewriter.config, path)
