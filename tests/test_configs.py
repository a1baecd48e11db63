"""Every YAML preset in configs/ loads into its stage's typed config (no unknown keys, right types)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vidpost.pipelines.config import load_config
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
