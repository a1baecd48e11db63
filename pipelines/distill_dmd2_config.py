"""The configuration of `vidpost distill --method dmd2` (`vidpost.pipelines.distill_dmd2`): one dataclass per YAML
section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vidpost.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from vidpost.models.sampling import SCHEDULES
from vidpost.sections import CheckpointConfig, LogConfig, LoraConfig, OptimConfig, PromptPool, VideoSize
from vidpost.training.parallel import ParallelConfig

# ---- configuration ----------------------------------------------------------------------------------------------


@dataclass
class DMD2ModelConfig:
    teacher: str = "shapes"
    """the teacher: a diffusers-format model directory or preset"""
    lora: str = ""
    """a LoRA folder fused into the teacher first (e.g. an RL stage's `final/`): the student distils teacher + LoRA"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of the frozen weights (trainable weights are kept in float32)"""
    gradient_checkpointing: bool = False
    """recompute the generator's and fake score's blocks in the backward pass (large models)"""


@dataclass
class GeneratorConfig:
    steps: PositiveInt = 4
    """Euler steps of the student (its saved default)"""
    schedule: Literal["uniform", "diffusers"] = "uniform"
    """the student's σ schedule (`vidpost.models.sampling.flow_sigmas`): "uniform" spends every step; "diffusers" is
    what stock WanPipeline's scheduler uses (its last step is from σ ≈ 0.003, nearly idle), so stock diffusers
    reproduces the student exactly"""
    shift: PositiveFloat | None = None
    """the student's schedule shift (null: the teacher's)"""
    train_steps: list[int] = field(default_factory=list)
    """step counts the backward simulation draws from, one per batch (empty: `steps` only); e.g. [1, 2, 4] trains
    one student for 1, 2 and 4 Euler steps (its saved default stays `steps`)"""


@dataclass
class FakeScoreConfig:
    updates: PositiveInt = 5
    """fake-score updates per generator update (DMD2's two time scales)"""
    lr_scale: float = 1.0
    """the fake score's (and GAN head's) learning rate as a multiple of optim.lr"""


@dataclass
class DMDLossConfig:
    guidance_scale: NonNegativeFloat = 5.0
    """CFG scale of the real score (the teacher)"""
    t_min: float = 0.02
    t_max: float = 0.98
    """range of the uniform u whose shifted value σ re-noises generator outputs"""
    shift: PositiveFloat | None = None
    """shift of that density (null: the teacher's)"""


@dataclass
class GanConfig:
    weight: float = 0.0
    """weight of the generator's GAN loss (0: no GAN head)"""
    head_weight: float = 1.0
    """weight of the head's classification loss in the fake-score update"""
    layer: int | None = None
    """transformer block whose output feeds the head (null: the middle block)"""
    real_data: str = ""
    """a latent cache of real clips (`vidpost sft precompute`'s folder), needed when weight > 0"""


@dataclass
class DMD2DataConfig(VideoSize, PromptPool):
    sample_prompts: list[str] | str = "shapes-heldout"
    """prompts of the sample grids (the first `log.sample_count`)"""


@dataclass
class DMD2TrainConfig:
    max_steps: PositiveInt = 300
    """generator updates"""
    batch_size: PositiveInt = 8
    """videos per update (per process)"""
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """autocast of the forward passes (GPU: bf16)"""


@dataclass
class DMD2LogConfig(LogConfig):
    sample_every: NonNegativeInt = 0
    """write `samples/step_N.png` every N steps (0: only at the end)"""
    sample_count: PositiveInt = 4


@dataclass
class DMD2Config:
    method: Literal["dmd2"] = "dmd2"
    output_dir: str = "runs/dmd2"
    model: DMD2ModelConfig = field(default_factory=DMD2ModelConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    fake_score: FakeScoreConfig = field(default_factory=FakeScoreConfig)
    dmd: DMDLossConfig = field(default_factory=DMDLossConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(enabled=False))
    data: DMD2DataConfig = field(default_factory=DMD2DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5))
    train: DMD2TrainConfig = field(default_factory=DMD2TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=100))
    log: DMD2LogConfig = field(default_factory=DMD2LogConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """sequence parallelism (`vidpost.training.parallel`; the GAN head needs sp_degree 1)"""

    def __post_init__(self) -> None:
        if self.generator.steps < 1 or any(n < 1 for n in self.generator.train_steps):
            raise ValueError(
                f"generator.steps and generator.train_steps must be >= 1, got {self.generator.steps}, "
                f"{self.generator.train_steps}"
            )
        if self.generator.schedule not in SCHEDULES:
            raise ValueError(f"generator.schedule must be one of {SCHEDULES}, got {self.generator.schedule!r}")
        if self.fake_score.updates < 1 or self.fake_score.lr_scale <= 0:
            raise ValueError("fake_score.updates must be >= 1 and fake_score.lr_scale > 0")
        if not 0.0 <= self.dmd.t_min < self.dmd.t_max <= 1.0:
            raise ValueError(f"need 0 <= dmd.t_min < dmd.t_max <= 1, got {self.dmd.t_min}, {self.dmd.t_max}")
        if self.train.batch_size < 1 or self.train.max_steps < 0:
            raise ValueError("train.batch_size must be >= 1 and train.max_steps >= 0")
        if self.gan.weight < 0 or self.gan.head_weight < 0:
            raise ValueError("gan.weight and gan.head_weight must be >= 0")
        if self.gan.weight > 0 and not self.gan.real_data:
            raise ValueError(
                "gan.weight > 0 needs gan.real_data (a `vidpost sft precompute` latent cache of real clips)"
            )
