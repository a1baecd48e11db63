"""Every YAML preset in configs/ loads into its stage's typed config (no unknown keys, right types)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vidpost.config import load_config
from vidpost.pipelines.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[1]
SFT_CONFIGS = sorted(ROOT.glob("configs/*/sft*.yaml")) + sorted(ROOT.glob("configs/*/pretrain.yaml"))


@pytest.mark.parametrize("path", SFT_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_sft_presets_validate(path):
    cfg = load_config(SFTConfig, path)
    assert cfg.train.max_steps > 0 and cfg.data.buckets


def test_there_are_presets_for_each_family():
    names = {str(p.relative_to(ROOT)) for p in SFT_CONFIGS}
    for want in ("configs/shapes/sft.yaml", "configs/wan2.1-t2v-1.3b/sft.yaml", "configs/hunyuanvideo/sft.yaml"):
        assert want in names


@pytest.mark.parametrize("path", sorted(ROOT.glob("configs/accelerate/*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1
    raw = yaml.safe_load(path.read_text())
    if raw["distributed_type"] == "FSDP":
        assert "WanTransformerBlock" in raw["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]


GRPO_CONFIGS = sorted(ROOT.glob("configs/*/grpo.yaml"))
RL_CONFIGS = sorted(ROOT.glob("configs/*/rl-*.yaml"))


@pytest.mark.parametrize("path", GRPO_CONFIGS + RL_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_rl_presets_validate(path):
    from vidpost.pipelines.rl import RLConfig, validate
    from vidpost.rewards.base import known_rewards

    cfg = load_config(RLConfig, path)
    validate(cfg)
    assert cfg.train.max_steps > 0 and cfg.rollout.group_size > 1
    for spec in (cfg.rewards.spec, cfg.guard.metric, cfg.guard.extra):
        for name, value in spec.items():
            kind = value.get("type", name) if isinstance(value, dict) else name
            assert kind in known_rewards(), f"{path}: unknown reward {kind!r}"
    assert not set(cfg.guard.metric) & set(cfg.rewards.spec), "the guard metric must not be a training reward"


def test_grpo_presets_exist_for_the_real_families():
    names = {str(p.relative_to(ROOT)) for p in GRPO_CONFIGS}
    assert {"configs/wan2.1-t2v-1.3b/grpo.yaml", "configs/hunyuanvideo/grpo.yaml"} <= names
