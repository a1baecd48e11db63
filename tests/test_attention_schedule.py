"""Step-aware attention schedule: parsing, lookup, errors."""

from __future__ import annotations

import pytest

from vidpost.kernels.attention_schedule import STEP_AWARE_SCHEDULE, AttentionPlan, AttentionSchedule
from vidpost.kernels.sparse_fp8_attention import SparseAttentionOptions

CONFIG = {
    "rules": [
        {"steps": [0.0, 0.2], "dense": True},
        {"steps": [0.2, 0.6], "window": [1, 1, 1], "topk": 4, "layers": [0, 1]},
        {"steps": [0.2, 0.6], "window": [1, 2, 2]},
        {"steps": [9, 10], "dense": True, "quant": "bf16"},
        {"steps": [0.6, 1.0], "topk": 8, "granularity": "head"},
    ],
    "default": {"window": [2, 2, 2]},
}


def test_lookup_by_fraction_index_and_layer():
    schedule = AttentionSchedule.from_dict(CONFIG, quant="fp8")
    assert schedule.plan(0, 10, 3) == AttentionPlan(dense=True, quant="fp8")
    assert schedule.plan(1, 10, 0).dense  # 0.1 < 0.2
    assert schedule.plan(2, 10, 1) == AttentionPlan(dense=False, window=(1, 1, 1), topk=4, quant="fp8")
    assert schedule.plan(2, 10, 5) == AttentionPlan(dense=False, window=(1, 2, 2), quant="fp8")
    assert schedule.plan(2, 10, None).window == (1, 2, 2)  # no layer: layer rules do not match
    assert schedule.plan(5, 10, 4).window == (1, 2, 2)  # 0.5 < 0.6
    assert schedule.plan(6, 10, 0) == AttentionPlan(dense=False, topk=8, quant="fp8", granularity="head")
    assert schedule.plan(9, 10, 0) == AttentionPlan(dense=True, quant="bf16")  # index rule before the 0.6-1.0 rule
    assert schedule.plan(49, 50, 0).topk == 8  # end 1.0 includes the last step
    assert schedule.plan(3, None, 0) == schedule.plan(None, 10, 0) == AttentionPlan(dense=False, window=(2, 2, 2))


def test_empty_schedule_is_dense_and_takes_quant():
    assert AttentionSchedule.from_dict(None, quant="bf16").plan(3, 10, 0) == AttentionPlan(quant="bf16")
    assert AttentionSchedule.from_dict({}).plan(3, 10, 0) == AttentionPlan(quant="fp8")


@pytest.mark.parametrize(
    "config,match",
    [
        ({"rulez": []}, "rulez"),
        ({"rules": [{"steps": [0, 1], "windw": [1, 1, 1]}]}, "windw"),
        ({"rules": [{"window": [1, 1]}]}, "window"),
        ({"rules": [{"window": [1, -1, 1]}]}, "window"),
        ({"rules": [{"topk": 0}]}, "topk"),
        ({"rules": [{"dense": True, "topk": 2}]}, "dense"),
        ({"rules": [{"steps": [0.5, 0.2]}]}, "steps"),
        ({"rules": [{"steps": [0.0, 1.5]}]}, "steps"),
        ({"rules": [{"steps": [3, 3]}]}, "steps"),
        ({"rules": [{"quant": "int4"}]}, "quant"),
        ({"rules": [{"granularity": "token"}]}, "granularity"),
        ({"rules": [{"layers": [-1]}]}, "layers"),
        ({"default": {"steps": [0, 1]}}, "default"),
        ({"rules": {"steps": [0, 1]}}, "list"),
    ],
)
def test_bad_schedules_raise(config, match):
    with pytest.raises(ValueError, match=match):
        AttentionSchedule.from_dict(config)


def test_bad_step_and_options():
    schedule = AttentionSchedule.from_dict(CONFIG)
    with pytest.raises(ValueError, match="step"):
        schedule.plan(10, 10, 0)
    with pytest.raises(ValueError, match="tyle"):
        SparseAttentionOptions.from_dict({"tyle": [2, 4, 4]})
    with pytest.raises(ValueError, match="tile"):
        SparseAttentionOptions.from_dict({"tile": [2, 4]})
    with pytest.raises(ValueError, match="quant"):
        SparseAttentionOptions.from_dict({"quant": "fp4"})
    with pytest.raises(ValueError, match="backend"):
        SparseAttentionOptions.from_dict({"backend": "cuda"})
    opts = SparseAttentionOptions.from_dict({"tile": [1, 2, 2], "quant": "bf16", "schedule": CONFIG})
    assert opts.tile == (1, 2, 2) and opts.schedule.plan(0, 10, 0).quant == "bf16"


def test_step_aware_preset_is_sparsest_early_middle():
    schedule = AttentionSchedule.from_dict(STEP_AWARE_SCHEDULE)
    plans = [schedule.plan(i, 50, 0) for i in range(50)]
    assert plans[0].dense and plans[4].dense and plans[49].dense and plans[45].dense
    assert plans[5] == AttentionPlan(dense=False, window=(1, 1, 1), topk=8)
    assert plans[25] == AttentionPlan(dense=False, window=(1, 2, 2), topk=16)
