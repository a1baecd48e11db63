"""The configuration of `vidpost rl`: the sections every algorithm shares (model, LoRA, optimizer, rollout, rewards,
train, guard, checkpoint, log, parallel) and one section per algorithm (`grpo:`, `nft:`, `awm:`, `rsft:`, `draft:`;
the forward-process methods nft, awm and rsft also read `forward:`, where they train). Keys of presets written
before this layout (`forward.nft_beta`, `train.timestep_fraction`, ...) are read under their new names with a
one-line warning (`vidpost.config.moved_keys`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vidpost.config import Fraction, NonNegativeFloat, PositiveInt, moved_keys
from vidpost.evaluation.guard import GuardConfig
from vidpost.rl.algorithms.awm import AWMSection
from vidpost.rl.algorithms.draft import DraftSection
from vidpost.rl.algorithms.forward import ForwardSection
from vidpost.rl.algorithms.grpo import GRPOSection
from vidpost.rl.algorithms.nft import NFTSection
from vidpost.rl.algorithms.rsft import RSFTSection
from vidpost.rl.policy import PolicyModelConfig
from vidpost.rl.rewards import RewardsConfig
from vidpost.rl.rollout import RolloutConfig
from vidpost.sections import CheckpointConfig, LogConfig, LoraConfig, OptimConfig
from vidpost.training.parallel import ParallelConfig

ALGORITHMS = ("grpo", "nft", "awm", "rsft", "draft")


@dataclass
class RLTrainConfig:
    max_steps: PositiveInt = 100
    """iterations (rollout, rewards, update)"""
    micro_batch: PositiveInt = 8
    """samples per forward/backward in the update (and per transformer call in the rollout)"""
    updates_per_iteration: PositiveInt = 1
    """optimizer steps per iteration: the micro-batches are split into this many consecutive parts, each part's
    gradients make one step; with more than one, the later parts see ratios ≠ 1 and the clipping acts"""
    clip_range: NonNegativeFloat = 1e-3
    """the ratio's clip range (grpo, awm)"""
    adv_clip: NonNegativeFloat = 5.0
    adv_eps: float = 1e-4
    global_std: bool = False
    kl_beta: NonNegativeFloat = 0.0
    """weight of the KL to the reference policy (0 disables)"""
    ema_decay: Fraction = 0.0
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"


@moved_keys(
    **{
        "train.timestep_fraction": "grpo.timestep_fraction",
        "forward.nft_beta": "nft.beta",
        "forward.old_decay_rate": "nft.old_decay_rate",
        "forward.old_decay_cap": "nft.old_decay_cap",
        "forward.awm_weighting": "awm.weighting",
        "forward.rsft_k": "rsft.k",
        "forward.rsft_min_advantage": "rsft.min_advantage",
        "forward.draft_steps": "draft.steps",
    }
)
@dataclass
class RLConfig:
    output_dir: str = "runs/rl"
    algorithm: Literal["grpo", "nft", "awm", "rsft", "draft"] = "grpo"
    """grpo (SDE rollouts, log-probs), a forward-process method: nft (DiffusionNFT), awm (advantage-weighted
    matching), rsft (rejection-sampling fine-tuning), or draft (reward backprop through the last sampling steps)"""
    model: PolicyModelConfig = field(default_factory=PolicyModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    forward: ForwardSection = field(default_factory=ForwardSection)
    """where the forward-process methods (nft, awm, rsft) train"""
    nft: NFTSection = field(default_factory=NFTSection)
    awm: AWMSection = field(default_factory=AWMSection)
    rsft: RSFTSection = field(default_factory=RSFTSection)
    draft: DraftSection = field(default_factory=DraftSection)
    guard: GuardConfig = field(default_factory=GuardConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=20, keep_last=2))
    log: LogConfig = field(default_factory=LogConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """sequence parallelism (`vidpost.training.parallel`; the guard needs sp_degree 1)"""


def validate(cfg: RLConfig) -> None:
    """One-line errors for settings an algorithm cannot run with."""
    if cfg.algorithm == "grpo" and cfg.rollout.sde == "ode":
        raise ValueError("algorithm grpo needs SDE steps to train (rollout.sde: dance, flow or cps)")
    if (
        cfg.algorithm != "grpo"
        and cfg.rollout.sde == "ode"
        and cfg.rollout.shared_noise
        and cfg.rollout.group_size > 1
    ):
        raise ValueError("ODE rollouts from one shared noise per group are identical: set rollout.shared_noise=false")
    if cfg.algorithm == "rsft" and cfg.rsft.k is None and cfg.rsft.min_advantage is None:
        raise ValueError("algorithm rsft needs rsft.k or rsft.min_advantage")
    if cfg.algorithm == "draft" and cfg.rollout.sde != "ode":
        raise ValueError("algorithm draft differentiates the ODE sampler: set rollout.sde=ode")
    if cfg.algorithm == "draft" and not 1 <= cfg.draft.steps <= cfg.rollout.steps:
        raise ValueError(f"draft.steps must be in 1..{cfg.rollout.steps} (rollout.steps)")
    fraction = cfg.grpo.timestep_fraction if cfg.algorithm == "grpo" else cfg.forward.timestep_fraction
    if cfg.algorithm != "draft" and fraction <= 0:
        section = "grpo" if cfg.algorithm == "grpo" else "forward"
        raise ValueError(f"{section}.timestep_fraction must be in (0, 1] (got {fraction})")
