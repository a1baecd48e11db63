"""`vidpost run`'s pipeline file (`configs/<world>/pipeline.yaml`) as typed sections, and the State one stage
hands to the next."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vidpost.config import NonNegativeFloat, PositiveFloat, PositiveInt


@dataclass
class DataStage:
    enabled: bool = True
    shapes_clips: int = 0
    """export this many Shapes train-split clips (mp4 + manifest) into the run; 0: use `manifest`"""
    manifest: str = ""
    """an existing JSONL/CSV manifest of {video, caption} (real data); used when shapes_clips is 0"""


@dataclass
class TrainStage:
    enabled: bool = True
    config: str = ""
    """the stage's YAML (e.g. configs/shapes/sft-lora.yaml); model/data/output paths are set by the pipeline"""
    overrides: list[str] = field(default_factory=list)
    """dotted overrides applied to that YAML (e.g. train.max_steps=200)"""


@dataclass
class EnhanceStage:
    enabled: bool = True
    enhancer: str = ""
    """use this enhancer without training: a causal LM folder, a .gguf file, or "zero-shot" (default SmolLM2)"""
    sft: str = ""
    """`vidpost enhance-train sft` YAML (trains a rewriter; ignored when `enhancer` is set)"""
    sft_overrides: list[str] = field(default_factory=list)
    grpo: str = ""
    """optional `vidpost enhance-train grpo` YAML run after sft, against the current video model"""
    grpo_overrides: list[str] = field(default_factory=list)


@dataclass
class OptimizeStage:
    enabled: bool = True
    inference: dict[str, Any] = field(default_factory=dict)
    """inference settings applied when generating: attention (implementation, layers, options,
    eav), cache, compile — see `vidpost.models.inference`"""
    quant: str | None = None
    """a low-precision recipe (configs/quant/*.yaml): the model (its LoRA fused first) is quantised and calibrated as
    `vidpost quantize` does, and the report's last row is the quantised model (null: none)"""


@dataclass
class EvalConfig:
    prompts: str = "shapes-heldout"
    """"shapes-heldout" or a prompts file (txt / JSON / JSONL of {id, prompt, caption?, seed?})"""
    limit: PositiveInt | None = 32
    """evaluate the first N prompts (null: all)"""
    rewards: dict[str, Any] = field(default_factory=lambda: {"verifier": 1.0})
    """reward spec (name → weight or options, as `vidpost eval`), scored against the caption / user prompt"""
    guard: dict[str, Any] = field(default_factory=dict)
    """the guard metric: a reward spec that no stage trains on (empty: none)"""
    num_frames: PositiveInt | None = None
    height: PositiveInt | None = None
    width: PositiveInt | None = None
    steps: PositiveInt | None = None
    guidance: NonNegativeFloat | None = None
    shift: PositiveFloat | None = None
    """generation settings (null: the model's defaults)"""
    batch_size: PositiveInt = 8
    grid_videos: int = 6
    """videos per stage kept for the report's side-by-side grid"""


@dataclass
class LaunchConfig:
    processes: PositiveInt = 1
    """processes for the sft and rl stages (>1: `accelerate launch`)"""
    accelerate_config: str = ""
    """accelerate config file for those stages (e.g. configs/accelerate/fsdp.yaml)"""
    extra_args: list[str] = field(default_factory=list)
    """more `accelerate launch` arguments (e.g. --cpu, --main_process_port 29511)"""


@dataclass
class PipelineConfig:
    name: str = "pipeline"
    run_dir: str = "runs/pipeline"
    model: str = "shapes-base"
    """the starting model: a diffusers-format folder or preset"""
    device: str = ""
    """cuda or cpu for evaluation and in-process stages; empty: cuda when available"""
    data: DataStage = field(default_factory=DataStage)
    sft: TrainStage = field(default_factory=TrainStage)
    rl: TrainStage = field(default_factory=TrainStage)
    """`vidpost rl` (any algorithm: its YAML's `algorithm`) from the SFT model"""
    enhance: EnhanceStage = field(default_factory=EnhanceStage)
    distill: TrainStage = field(default_factory=lambda: TrainStage(enabled=False))
    """`vidpost distill --method dmd2` (a few-step, CFG-free student of the current model and LoRA); off unless the
    pipeline file has a `distill:` section with a config"""
    optimize: OptimizeStage = field(default_factory=OptimizeStage)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


@dataclass
class State:
    """What one stage hands to the next."""

    model: str
    lora: str | None = None
    enhancer: str | None = None
    inference: dict[str, Any] = field(default_factory=dict)
    manifest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
