"""GRPO invariants on a miniature Wan: ratio exactly 1 before the first update (any micro-batch size), every
trainable parameter moves after one step, resume equals an uninterrupted run, 2 processes equal 1 at the same
global batch, the reward-hacking guard stops the run and keeps the best weights, a NaN reward stops with exit 3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidpost.config import load_config
from vidpost.pipelines.rl import RLConfig, main, train
from vidpost.rewards.base import Reward, RewardOutput, register
from vidpost.training.runner import TrainResult

PROMPTS = ["a red circle moves right", "a blue square moves left", "a green triangle stays still", "a dot"]


@pytest.fixture
def cfg_for(tmp_path, tiny_wan_dir, grpo_overrides):
    """`cfg_for(name, *extra)`: the miniature run's config (conftest `grpo_overrides`) writing to tmp_path/name."""

    def make(name: str, *extra: str) -> RLConfig:
        return load_config(RLConfig, None, grpo_overrides(tmp_path / name, tiny_wan_dir, *extra))

    return make


@pytest.mark.parametrize("micro_batch", [1, 6])
def test_ratio_is_exactly_one_before_the_first_update(micro_batch, cfg_for):
    cfg = cfg_for(f"r{micro_batch}", "train.max_steps=1", f"train.micro_batch={micro_batch}")
    first = train(cfg).history[0]
    assert first["ratio_min"] == 1.0 and first["ratio_max"] == 1.0
    assert first["clip_fraction"] == 0.0 and first["approx_kl"] == 0.0


def _lora(result) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result.final) / "pytorch_lora_weights.safetensors"))


def test_every_trainable_parameter_changes(tiny_wan_dir, cfg_for):
    # LoRA: B starts at zero, so A has no gradient on the first step; after two steps every tensor has moved.
    before = _lora(train(cfg_for("move0", "train.max_steps=1", "optim.lr=0")))
    after = _lora(train(cfg_for("move", "train.max_steps=2", "optim.max_grad_norm=0")))
    assert before.keys() == after.keys() and len(after) > 0
    unchanged = [k for k in after if torch.equal(after[k], before[k])]
    assert not unchanged, f"{len(unchanged)} LoRA tensors did not change, e.g. {unchanged[:3]}"
    # Full fine-tuning: one step moves every parameter of the transformer.
    from vidpost.models import load

    full = train(cfg_for("full-ft", "train.max_steps=1", "lora.enabled=false", "optim.lr=1e-4"))
    new = dict(load(full.final).transformer.named_parameters())
    old = dict(load(tiny_wan_dir).transformer.named_parameters())
    same = [k for k in old if torch.equal(old[k], new[k])]
    assert not same, f"{len(same)} parameters did not change, e.g. {same[:3]}"


def test_resume_equals_uninterrupted(cfg_for):
    common = ("checkpoint.every=2", "optim.schedule=constant")
    full = train(cfg_for("full", "train.max_steps=4", *common))
    part = cfg_for("part", "train.max_steps=2", *common)
    train(part)
    resumed = train(cfg_for("part", "train.max_steps=4", *common), resume="latest")
    assert [h["reward"] for h in resumed.history] == [h["reward"] for h in full.history[2:]]
    a, b = _lora(full), _lora(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_two_processes_match_one(tmp_path, tiny_wan_dir, cfg_for, grpo_overrides):
    one = train(cfg_for("one", "train.max_steps=2"))
    out = tmp_path / "two"
    overrides = grpo_overrides(
        out, tiny_wan_dir, "rollout.prompts_per_step=1", "train.micro_batch=3", "train.max_steps=2"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "vidpost.pipelines.rl",
        *overrides,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    for h1, h2 in zip(one.history, history):
        # Float summation order differs (rollout chunks of 6 vs 3 samples, thread counts): equal to float precision.
        assert h1["reward"] == pytest.approx(h2["reward"], rel=1e-5)
    a = _lora(one)
    b = load_file(str(out / "final" / "pytorch_lora_weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_guard_stops_and_keeps_the_best(tmp_path, cfg_for):
    # Prompts that are not Shapes captions score 0 under the verifier: the metric never improves on its first
    # value, and a negative margin makes "no improvement" a drop.
    cfg = cfg_for(
        "guard",
        "train.max_steps=10",
        "guard.every=2",
        f"guard.prompts={json.dumps(PROMPTS[:2])}",
        "guard.steps=2",
        "guard.margin=-1",
        "checkpoint.every=5",
    )
    result = train(cfg)
    assert result.steps == 2 and result.stopped is not None and "guard" in result.stopped
    assert result.best_step == 0 and Path(result.best, "pytorch_lora_weights.safetensors").exists()
    assert [g["step"] for g in result.guard] == [0, 2]
    assert isinstance(result, TrainResult) and result.kind == "lora" and result.final == Path(cfg.output_dir, "final")
    assert result.metrics["guard/gold"] == result.guard[-1]["gold"]
    assert (tmp_path / "guard" / "curves.png").exists()


def test_guard_watch_stops_on_a_falling_extra_metric(cfg_for):
    # The gold metric cannot trip (margin 10); the watched extra metric with a negative margin trips at the first
    # comparison, as a real drop would.
    common = ("guard.every=2", f"guard.prompts={json.dumps(PROMPTS[:2])}", "guard.steps=2", "guard.margin=10")
    cfg = cfg_for("watch", "train.max_steps=6", *common, "guard.watch={temporal: -1}")
    result = train(cfg)
    assert result.steps == 2 and "temporal" in result.stopped and "below its best" in result.stopped
    assert Path(result.best, "pytorch_lora_weights.safetensors").exists()
    # A watched name that is not an extra metric is a config error, raised when the config is loaded.
    with pytest.raises(ValueError, match=r"guard.watch: \['graded'\] not in guard.extra"):
        cfg_for("watch-bad", "train.max_steps=1", *common, "guard.watch={graded: 0.1}")


def test_watch_tripped_compares_with_the_best_earlier_entry():
    from vidpost.evaluation.guard import watch_tripped

    h = [{"step": 0, "extra/g": 0.5}, {"step": 10, "extra/g": 0.6}, {"step": 20, "extra/g": 0.56}]
    assert watch_tripped(h, {"g": 0.05}, Path("best")) is None
    msg = watch_tripped(h, {"g": 0.03}, Path("best"))
    assert msg is not None and "0.560 at iteration 20" in msg and "0.600 (iteration 10)" in msg
    assert watch_tripped(h[:1], {"g": 0.0}, Path("best")) is None  # nothing to compare with yet


class _NaNReward(Reward):
    name = "nan"

    def _score(self, videos, prompts):
        return RewardOutput(torch.full((len(prompts),), float("nan")))


register("test_nan")(lambda **kw: _NaNReward(**kw))


def test_nan_reward_stops_with_exit_code_3(tmp_path, tiny_wan_dir, capsys):
    code = main(
        [
            f"output_dir={tmp_path / 'nan'}",
            f"model.path={tiny_wan_dir}",
            f"rollout.prompts={json.dumps(PROMPTS)}",
            "rollout.prompts_per_step=1",
            "rollout.group_size=2",
            "rollout.num_frames=5",
            "rollout.height=16",
            "rollout.width=16",
            "rollout.steps=2",
            "rewards.spec={test_nan: 1.0}",
            "guard.every=0",
            "log.tensorboard=false",
        ]
    )
    assert code == 3
    err = capsys.readouterr().err
    assert "rewards ['total', 'test_nan'] became nan at step 1" in err and "no usable checkpoint was saved" in err


def test_unknown_config_key_is_an_error(tiny_wan_dir, capsys):
    assert main([f"model.path={tiny_wan_dir}", "rollout.group_sise=4"]) == 2
    assert "rollout.group_sise" in capsys.readouterr().err


def test_best_of_n_keeps_the_highest_scoring_candidate(tmp_path, tiny_wan_dir):
    from vidpost.pipelines.best_of_n import main as best_main

    out = tmp_path / "bon"
    code = best_main(
        [
            "--model",
            str(tiny_wan_dir),
            "--prompt",
            "a red circle",
            "--prompt",
            "a blue dot",
            "-n",
            "3",
            "--reward",
            "motion",
            "--steps",
            "2",
            "--frames",
            "5",
            "--height",
            "16",
            "--width",
            "16",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "best_of_n.json").read_text())
    assert len(summary) == 2
    for item in summary:
        assert len(item["scores"]) == 3 and item["scores"][item["best"]] == max(item["scores"])
    assert len(list(out.glob("*.mp4"))) == 2 and (out / "candidates.png").exists()
    assert best_main(["--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2


def test_several_updates_per_iteration_make_the_clipping_act(cfg_for):
    cfg = cfg_for(
        "upd",
        "train.max_steps=1",
        "train.micro_batch=2",
        "train.updates_per_iteration=3",
        "optim.lr=1e-2",
        "train.clip_range=1e-4",
    )
    first = train(cfg).history[0]
    assert first["ratio_max"] > 1.0 or first["ratio_min"] < 1.0
    assert first["clip_fraction"] > 0
