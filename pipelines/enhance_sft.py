"""Stage 3 — prompt enhancement, first step: supervised fine-tuning of the prompt rewriter on (short prompt → target
prompt) pairs.

    vidpost enhance train sft --config configs/shapes/enhance-sft.yaml [dotted.overrides=...] [--resume latest]

The rewriter sees, in training exactly as at inference, the chat `Rewriter.render` builds from its `RewriterConfig`
(the `rewriter:` section: system prompt + few-shot turns + the user prompt, rendered by the model's chat template).

One optimizer step:
  batch     ← `batch_size · grad_accum` pairs; the order is a fresh permutation per epoch seeded by (seed, epoch),
              so it depends on (seed, step) only (`enhance.train.epoch_batch`)
  tokens    ← rendered chat (labels −100) + completion = the target and the template's end-of-turn token
  loss      ← Σ −log p_θ(completion token | everything before) / (number of completion tokens in the whole batch),
              accumulated over the micro-batches (so grad_accum k × batch b equals grad_accum 1 × batch k·b)
  update    ← clip the gradient norm, AdamW, warm-up then constant / linear / cosine lr (as `vidpost sft`)

The LM is trained with a peft LoRA (all linear layers by default) or fully; checkpoints every `checkpoint.every` steps
(trainable weights, optimizer, scheduler; `--resume latest`); `history.json` logs every step; `final/` is a model
folder with the LoRA merged in, the tokenizer and `rewriter.yaml` — `Rewriter.from_pretrained(final)` loads it.
Single process, one device.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from vidpost.config import PositiveInt
from vidpost.enhance.lm import LMConfig, LMLoraConfig, PairsConfig, export_lm, load_rows, setup_model
from vidpost.enhance.miniature import resolve_miniature
from vidpost.sections import CheckpointConfig, LogConfig, OptimConfig
from vidpost.training.loop import Trainer
from vidpost.training.recovery import logits_probe
from vidpost.training.runner import TrainResult, one_run_per_output


@dataclass
class SFTTrainConfig:
    max_steps: PositiveInt = 500
    batch_size: PositiveInt = 8
    """pairs per micro-batch"""
    grad_accum: PositiveInt = 1
    seed: int = 0


@dataclass
class EnhanceSFTConfig:
    output_dir: str = "runs/enhance-sft"
    model: LMConfig = field(default_factory=LMConfig)
    rewriter: dict[str, Any] = field(default_factory=dict)
    """RewriterConfig settings that render the chat (target, system_prompt, few_shot, ...); {} = the defaults,
    which is what `Rewriter.from_pretrained(path)` (and generate.py --enhance) uses"""
    data: PairsConfig = field(default_factory=PairsConfig)
    lora: LMLoraConfig = field(default_factory=LMLoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


@one_run_per_output
def train_sft(cfg: EnhanceSFTConfig, resume: str | None = None) -> TrainResult:
    from vidpost.enhance.train import collate, encode_pair, epoch_batch, token_nll_sum

    trainer = Trainer("enhance-sft", cfg, one_process=True)
    rows = load_rows(cfg.data, ("prompt", "target"))
    cfg.model.path = resolve_miniature(cfg.model.path, trainer.out_dir)
    model, rewriter, params = setup_model(cfg.model, cfg.lora, cfg.rewriter)
    encoded = [encode_pair(rewriter, r["prompt"], r["target"]) for r in rows]
    kept = [e for e in encoded if len(e.input_ids) <= cfg.data.max_length]
    if len(kept) < len(encoded):
        print(
            f"warning: skipped {len(encoded) - len(kept)} pairs longer than {cfg.data.max_length} tokens",
            file=sys.stderr,
        )
    if not kept:
        raise ValueError(f"every pair is longer than data.max_length={cfg.data.max_length} tokens")
    trainer.optimize(params)
    pad = rewriter.tokenizer.pad_token_id
    device = next(model.parameters()).device
    probe = logits_probe(model, {k: v.to(device) for k, v in collate(kept[:1], pad).items()})
    trainer.begin(resume, model=model, probe=probe, desc="enhance sft")
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    model.train()
    while trainer.running:
        idx = epoch_batch(len(kept), bs * accum, cfg.train.seed, trainer.step)
        micro = [collate([kept[i] for i in idx[m * bs : (m + 1) * bs]], pad) for m in range(accum)]
        total_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        loss_sum = 0.0
        for batch in micro:
            nll, _ = token_nll_sum(model, {k: v.to(device) for k, v in batch.items()})
            (nll / total_tokens).backward()
            loss_sum += float(nll.detach())
        loss = loss_sum / total_tokens
        trainer.check_finite("loss", loss)
        grad_norm = trainer.optimizer_step(params, always_norm=True)
        trainer.end_step({"loss": loss, "tokens": total_tokens}, grad_norm=grad_norm)
    trainer.close_bar()
    final = export_lm(model, rewriter, trainer.out_dir / "final")
    result = TrainResult(
        kind="rewriter", final=final, steps=trainer.step, base_model=cfg.model.path, extra={"pairs": len(kept)}
    )
    return trainer.finish(result)
