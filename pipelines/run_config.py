"""`vidpost run`'s pipeline file (`configs/<world>/pipeline.yaml`) as typed sections, and the State one stage
hands to the next."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidpost.config import NonNegativeFloat, PositiveFloat, PositiveInt, load_config, parse_yaml, to_dict


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
    """`vidpost enhance train sft` YAML (trains a rewriter; ignored when `enhancer` is set)"""
    sft_overrides: list[str] = field(default_factory=list)
    grpo: str = ""
    """optional `vidpost enhance train grpo` YAML run after sft, against the current video model"""
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


# ---- hashing and records --------------------------------------------------------------------------------------


def config_text(path: str, base: Path) -> str:
    """The text of the config file `path` (relative to `base`) with its `base:` chain: what a stage hash reads."""
    if not path:
        return ""
    p = resolve_path(path, base)
    if not p.is_file():
        raise ValueError(f"stage config {path} does not exist (looked at {p})")
    text = p.read_text()
    # a `base:` include is part of the config
    data = parse_yaml(text, f"stage config {p}") or {}
    if isinstance(data, dict) and data.get("base"):
        text += config_text(str(p.parent / data["base"]), base)
    return text


def resolve_path(path: str, base: Path) -> Path:
    """A path from the pipeline file: absolute, relative to the working directory, or relative to the file."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return base / p


def stage_hash(name: str, cfg: PipelineConfig, upstream: str, base: Path) -> str:
    section = to_dict(getattr(cfg, name)) if name not in ("base",) else {"model": cfg.model}
    files = ""
    if name in ("sft", "rl", "distill"):
        files = config_text(section["config"], base) if section["enabled"] else ""
    elif name == "enhance" and section["enabled"] and not section["enhancer"]:
        files = config_text(section["sft"], base) + config_text(section["grpo"], base)
    elif name == "optimize" and section["enabled"] and section["quant"]:
        files = config_text(section["quant"], base)
    blob = json.dumps({"stage": name, "section": section, "files": files, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def eval_hash(stage: str, cfg: PipelineConfig) -> str:
    return hashlib.sha256(json.dumps({"h": stage, "eval": to_dict(cfg.eval)}, sort_keys=True).encode()).hexdigest()[
        :16
    ]


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def validate(cfg: PipelineConfig, base: Path) -> list[str]:
    """Load every stage's own config (with the pipeline's overrides) → problems found (empty: valid)."""
    from vidpost.pipelines import distill_dmd2, enhance_train, rl, sft

    problems = []
    checks = [("sft", sft.SFTConfig, cfg.sft.config, cfg.sft.overrides, cfg.sft.enabled)]
    checks += [("rl", rl.RLConfig, cfg.rl.config, cfg.rl.overrides, cfg.rl.enabled)]
    checks += [("distill", distill_dmd2.DMD2Config, cfg.distill.config, cfg.distill.overrides, cfg.distill.enabled)]
    use_lm = cfg.enhance.enabled and not cfg.enhance.enhancer
    checks += [("enhance.sft", enhance_train.EnhanceSFTConfig, cfg.enhance.sft, cfg.enhance.sft_overrides, use_lm)]
    checks += [("enhance.grpo", enhance_train.EnhanceGRPOConfig, cfg.enhance.grpo, cfg.enhance.grpo_overrides, use_lm)]
    for name, cls, path, overrides, enabled in checks:
        if not enabled or (name == "enhance.grpo" and not path):
            continue
        if not path:
            problems.append(f"{name}: no config file given")
            continue
        try:
            load_config(cls, resolve_path(path, base), overrides)
        except ValueError as e:
            problems.append(f"{name} ({path}): {e}")
    if cfg.optimize.enabled:
        from vidpost.models.inference import InferenceConfig

        try:
            InferenceConfig.from_dict(cfg.optimize.inference)
        except ValueError as e:
            problems.append(f"optimize.inference: {e}")
        if cfg.optimize.quant:
            from vidpost.models.quant import read_recipe

            try:
                read_recipe(resolve_path(cfg.optimize.quant, base))
            except ValueError as e:
                problems.append(f"optimize.quant ({cfg.optimize.quant}): {e}")
    if cfg.data.enabled and cfg.data.shapes_clips <= 0 and not cfg.data.manifest:
        problems.append("data: needs shapes_clips > 0 or a manifest")
    if cfg.enhance.enabled and not cfg.enhance.enhancer and not cfg.enhance.sft:
        problems.append("enhance: needs `enhancer` or `sft`")
    try:
        from vidpost.rewards.base import known_rewards

        known = set(known_rewards())
        for section in ("rewards", "guard"):
            for key, value in getattr(cfg.eval, section).items():
                kind = value.get("type", key) if isinstance(value, dict) else key
                if kind not in known:
                    problems.append(f"eval.{section}: unknown reward {kind!r} (known: {', '.join(sorted(known))})")
    except ImportError as e:  # pragma: no cover - rewards are part of the package
        problems.append(str(e))
    return problems
