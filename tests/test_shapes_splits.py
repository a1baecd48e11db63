"""Fixed, versioned Shapes-world splits: held-out set, training stream, committed JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidpost.shapes.captions import caption, parse_caption
from vidpost.shapes.splits import (
    HELDOUT_SEED_BASE,
    heldout_json_path,
    heldout_prompts,
    is_heldout,
    train_specs,
    write_heldout_json,
)
from vidpost.shapes.world import SceneSpec, random_scene


def test_heldout_set_is_fixed_and_well_formed():
    items = heldout_prompts("v1")
    assert len(items) == 64
    assert items == heldout_prompts("v1")
    assert [item["id"] for item in items] == [f"heldout-v1-{i:03d}" for i in range(64)]
    assert len({item["caption"] for item in items}) == 64
    assert sum(len(item["spec"]["objects"]) == 2 for item in items) == 24
    for item in items:
        assert set(item) == {"id", "caption", "prompt_user", "spec", "seed"}
        spec = SceneSpec.from_dict(item["spec"])
        assert caption(spec) == item["caption"] and parse_caption(item["caption"]) == spec
        assert is_heldout(spec)
        assert item["prompt_user"] != item["caption"]
        assert item["seed"] >= HELDOUT_SEED_BASE


def test_train_stream_is_disjoint_deterministic_and_prefix_stable():
    items = train_specs(600)
    assert items[:50] == train_specs(50)
    assert train_specs(50, seed=1) != train_specs(50)
    heldout = heldout_prompts()
    heldout_captions = {item["caption"] for item in heldout}
    heldout_seeds = {item["seed"] for item in heldout}
    for item in items:
        assert not is_heldout(item["caption"])
        assert item["caption"] not in heldout_captions
        assert 0 <= item["seed"] < HELDOUT_SEED_BASE and item["seed"] not in heldout_seeds
        assert SceneSpec.from_dict(item["spec"]) == parse_caption(item["caption"])
    assert len({item["id"] for item in items}) == 600
    # the rule holds out about 1/16 of captions: check it is not vacuous
    all_captions = [caption(SceneSpec.from_dict(i["spec"])) for i in items] + list(heldout_captions)
    assert any(is_heldout(c) for c in all_captions)


def test_heldout_rule_fraction():
    rng = np.random.default_rng(0)
    fraction = np.mean([is_heldout(random_scene(rng)) for _ in range(3000)])
    assert 0.045 < fraction < 0.08  # 1/16 of captions


def test_committed_json_matches_the_function(tmp_path):
    committed = json.loads(heldout_json_path("v1").read_text(encoding="utf-8"))
    assert committed == heldout_prompts("v1")
    written = write_heldout_json("v1", tmp_path / "h.json")
    assert written.read_text(encoding="utf-8") == heldout_json_path("v1").read_text(encoding="utf-8")


def test_unknown_version():
    with pytest.raises(ValueError, match="unknown split version 'v9'"):
        heldout_prompts("v9")
    with pytest.raises(ValueError, match="unknown split version"):
        train_specs(3, "v0")
