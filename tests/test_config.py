"""Typed configs: YAML + dotted overrides, unknown keys and wrong types are errors naming the key."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from vidpost.config import config_hash, field_docs, load_config, to_dict


@dataclass
class Train:
    lr: float = 1e-4
    """learning rate"""
    steps: int = 10
    schedule: Literal["constant", "cosine"] = "constant"
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Cfg:
    name: str = "x"
    """run name"""
    model: str | None = None
    train: Train = field(default_factory=Train)
    rewards: dict[str, float] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: run\ntrain:\n  lr: 3\n  schedule: cosine\nrewards: {verifier: 1.0}\n")
    cfg = load_config(Cfg, f, ["train.steps=5", "train.lr=2e-5", "tags=[a, b]", "model=null"])
    assert cfg.name == "run" and cfg.train.steps == 5 and cfg.train.lr == pytest.approx(2e-5)
    assert cfg.train.schedule == "cosine" and cfg.rewards == {"verifier": 1.0} and cfg.tags == ["a", "b"]
    assert isinstance(load_config(Cfg, f).train.lr, float)  # int accepted for float
    assert load_config(Cfg, None, ["train.betas=[0.8, 0.9]"]).train.betas == (0.8, 0.9)


@pytest.mark.parametrize(
    "override, msg",
    [
        ("train.lrr=1", "unknown config key 'train.lrr' (valid keys under 'train': betas, lr, schedule, steps)"),
        ("nme=1", "unknown config key 'nme'"),
        ("train.steps=1.5", "config key 'train.steps': expected an integer"),
        ("train.schedule=linear", "config key 'train.schedule': 'linear' is not one of"),
        ("train=3", "config key 'train': expected a mapping"),
        ("tags=a", "config key 'tags': expected a list"),
        ("noequals", "must look like dotted.key=value"),
    ],
)
def test_errors_name_the_key(override, msg):
    with pytest.raises(ValueError) as err:
        load_config(Cfg, None, [override])
    assert msg in str(err.value)


def test_base_inheritance_and_hash(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ntrain: {lr: 0.5, steps: 3}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain: {steps: 7}\n")
    cfg = load_config(Cfg, tmp_path / "child.yaml")
    assert (cfg.name, cfg.train.lr, cfg.train.steps) == ("base", 0.5, 7)
    assert config_hash(cfg) == config_hash(load_config(Cfg, tmp_path / "child.yaml"))
    assert config_hash(cfg) != config_hash(load_config(Cfg, tmp_path / "child.yaml", ["train.steps=8"]))
    assert to_dict(cfg)["train"]["steps"] == 7


def test_missing_file_and_docs(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(Cfg, tmp_path / "nope.yaml")
    docs = field_docs(Cfg)
    assert docs["name"] == 'str = "x" — run name' and docs["train.lr"] == "float = 0.0001 — learning rate"
    # every key is listed, with or without a docstring: sections, their keys, lists, dicts, Optional fields
    assert docs["train"] == "Train section" and docs["train.steps"] == "int = 10"
    assert docs["train.schedule"] == "Literal['constant', 'cosine'] = \"constant\""
    assert docs["train.betas"] == "tuple[float, float] = [0.9, 0.999]"
    assert docs["model"] == "str | None = null" and docs["rewards"] == "dict[str, float] = {}"
    assert list(docs) == ["name", "model", "train", "train.lr", "train.steps", "train.schedule", "train.betas"] + [
        "rewards",
        "tags",
    ]


@dataclass
class Inner:
    x: int = 1


@dataclass
class Base:
    a: int = 0
    """from the base class"""


@dataclass
class Child(Base):
    opt: Inner | None = None
    """an optional section"""
    required: str = field(default="r")


def test_field_docs_optional_sections_and_inherited_fields():
    docs = field_docs(Child)
    assert docs == {
        "a": "int = 0 — from the base class",
        "opt": "Inner | None = null — an optional section",
        "opt.x": "int = 1",
        "required": 'str = "r"',
    }


def _keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config dataclass, walked independently of field_docs."""
    import dataclasses
    import typing

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.append(prefix + f.name)
        tp = hints[f.name]
        inner = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(tp) or len(inner) == 1:
            out += _keys(inner[0], prefix + f.name + ".")
    return out


def _stage_configs():
    from vidpost.pipelines.distill import DistillConfig
    from vidpost.pipelines.enhance_train import EnhanceGRPOConfig, EnhanceSFTConfig
    from vidpost.pipelines.run import PipelineConfig
    from vidpost.pipelines.sft import SFTConfig
    from vidpost.rl.config import RLConfig

    return [SFTConfig, RLConfig, DistillConfig, EnhanceSFTConfig, EnhanceGRPOConfig, PipelineConfig]


@pytest.mark.parametrize("cls", _stage_configs(), ids=lambda c: c.__name__)
def test_help_config_lists_every_key_of_every_stage_with_its_default(cls):
    import dataclasses

    docs = field_docs(cls)
    keys = _keys(cls)
    assert len(keys) > 10 and set(docs) == set(keys), sorted(set(keys) ^ set(docs))
    default = cls()
    for key in keys:
        *path, name = key.split(".")
        node = default
        for part in path:
            node = getattr(node, part)
        if node is None:  # under an Optional section that is off by default: its own class's default
            continue
        value = getattr(node, name)
        if dataclasses.is_dataclass(value):
            assert docs[key].endswith("section") or " section — " in docs[key], key
        else:
            assert f" = {json.dumps(to_dict_value(value))}" in docs[key], (key, docs[key])


def to_dict_value(value):
    import json

    return json.loads(json.dumps(value, default=str))
