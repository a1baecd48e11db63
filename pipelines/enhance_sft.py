"""Stage 3 — prompt enhancement, first step: supervised fine-tuning of the prompt rewriter on (short prompt → target
prompt) pairs.

    vidpost enhance-train sft --config configs/shapes/enhance-sft.yaml [dotted.overrides=...] [--resume latest]

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vidpost.config import PositiveInt
from vidpost.enhance.miniature import resolve_miniature
from vidpost.training.checkpoint import Checkpoints
from vidpost.training.config import CheckpointConfig, OptimConfig
from vidpost.training.lm import LMConfig, LMLoraConfig, PairsConfig, export_lm, load_rows, setup_model
from vidpost.training.optim import make_optimizer, make_scheduler
from vidpost.training.recovery import logits_probe
from vidpost.training.runner import TrainResult, one_run_per_output
from vidpost.training.tracking import read_history, write_config, write_history


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


@one_run_per_output
def train_sft(cfg: EnhanceSFTConfig, resume: str | None = None) -> TrainResult:
    from vidpost.enhance.train import collate, encode_pair, epoch_batch, token_nll_sum

    out_dir = Path(cfg.output_dir)
    torch.manual_seed(cfg.train.seed)
    rows = load_rows(cfg.data, ("prompt", "target"))
    cfg.model.path = resolve_miniature(cfg.model.path, out_dir)
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
    write_config(out_dir, cfg)
    optimizer = make_optimizer(params, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.train.max_steps)
    pad = rewriter.tokenizer.pad_token_id
    device = next(model.parameters()).device
    probe = logits_probe(model, {k: v.to(device) for k, v in collate(kept[:1], pad).items()})
    ckpt = Checkpoints(out_dir, cfg, model, optimizer, scheduler, probe=probe)
    step = ckpt.resume(resume)
    earlier = read_history(out_dir, step)  # history.json continues the whole run
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    history: list[dict[str, Any]] = []
    bar = tqdm(total=cfg.train.max_steps, initial=step, desc="enhance sft")
    model.train()
    while step < cfg.train.max_steps:
        t0 = time.perf_counter()
        idx = epoch_batch(len(kept), bs * accum, cfg.train.seed, step)
        micro = [collate([kept[i] for i in idx[m * bs : (m + 1) * bs]], pad) for m in range(accum)]
        total_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        loss_sum = 0.0
        for batch in micro:
            nll, _ = token_nll_sum(model, {k: v.to(device) for k, v in batch.items()})
            (nll / total_tokens).backward()
            loss_sum += float(nll.detach())
        loss = loss_sum / total_tokens
        ckpt.check_finite("loss", loss, step + 1)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        ckpt.check_step(step, grad_norm=grad_norm)
        rec = {
            "step": step,
            "loss": loss,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "tokens": total_tokens,
            "step_seconds": time.perf_counter() - t0,
        }
        history.append(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{rec['lr']:.2e}")
        if ckpt.due(step):
            ckpt.save(step)
    bar.close()
    write_history(out_dir, earlier + history)
    final = export_lm(model, rewriter, out_dir / "final")
    result = TrainResult(
        kind="rewriter",
        final=final,
        steps=step,
        history=history,
        base_model=cfg.model.path,
        extra={"pairs": len(kept)},
    )
    result.write(out_dir)
    return result
