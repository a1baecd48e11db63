"""A blow-up in any trainer stops it with exit 3 and names a checkpoint whose weights still give a finite forward pass;
resuming from it with a lower learning rate finishes. One good step is trained and checkpointed, then the run is
resumed with an lr that blows the weights up, then resumed again with a lower one (the user's recovery)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidpost.cli import main as vidpost

CHAT = {"system_prompt": "the video", "few_shot": [["a cat", "the cat runs on grass"]], "max_new_tokens": 12}
NO_TB = ["log.tensorboard=false"]
PAIRS = [("red circle right", "a red circle moves to the right"), ("dog grass", "the dog runs on grass")]


@pytest.fixture
def pairs_file(write_pairs):
    return write_pairs(PAIRS)


def _distill(out, tiny_wan_dir, **_):
    args = [f"output_dir={out}", f"model.teacher={tiny_wan_dir}", "data.prompts=['a red circle', 'a blue square']"]
    return ["distill", *args, "data.num_frames=5", "data.height=32", "data.width=32", "data.steps=3", *NO_TB]


def _dmd2(out, tiny_wan_dir, **_):
    args = [f"output_dir={out}", f"model.teacher={tiny_wan_dir}", "data.prompts=['a red circle', 'a blue square']"]
    args += ["data.sample_prompts=['a red circle']", "log.sample_count=1", "generator.steps=2", "fake_score.updates=1"]
    return ["distill", "--method", "dmd2", *args, "data.num_frames=5", "data.height=32", "data.width=32", *NO_TB]


def _grpo(out, tiny_wan_dir, grpo_overrides, **_):
    return ["rl", *grpo_overrides(out, tiny_wan_dir), *NO_TB]


def _enhance_sft(out, lm_dir, pairs_file, **_):
    args = [f"output_dir={out}", f"model.path={lm_dir}", "model.device=cpu", f"rewriter={json.dumps(CHAT)}"]
    return ["enhance", "train", "sft", *args, f"data.path={pairs_file}", "lora.rank=4", "train.batch_size=2"]


def _enhance_grpo(out, lm_dir, tiny_wan_dir, pairs_file, **_):
    args = [f"output_dir={out}", f"model.path={lm_dir}", "model.device=cpu", f"rewriter={json.dumps(CHAT)}"]
    args += [f"data.path={pairs_file}", f"video.path={tiny_wan_dir}", "video.num_frames=5", "video.height=16"]
    args += ["video.width=16", "video.steps=2", "video.guidance_scale=1.0", "sampling.prompts_per_step=2"]
    args += ["sampling.k=2", "sampling.max_new_tokens=6", "rewards.video={temporal: 1.0}", "rewards.intent_weight=0"]
    return ["enhance", "train", "grpo", *args, "lora.rank=4", "train.micro_batch=2"]


TRAINERS = {
    "distill": _distill,
    "dmd2": _dmd2,
    "grpo": _grpo,
    "enhance-sft": _enhance_sft,
    "enhance-grpo": _enhance_grpo,
}


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_every_trainer_recovers_from_a_blow_up(
    trainer, tmp_path, tiny_wan_dir, lm_dir, pairs_file, grpo_overrides, capsys
):
    out = tmp_path / "run"
    kw = {"tiny_wan_dir": tiny_wan_dir, "lm_dir": lm_dir, "pairs_file": pairs_file, "grpo_overrides": grpo_overrides}
    base = [*TRAINERS[trainer](out, **kw), "checkpoint.every=1", "checkpoint.keep_last=10"]
    base += ["optim.warmup_steps=0", "optim.max_grad_norm=0"]
    assert vidpost([*base, "optim.lr=1e-3", "train.max_steps=1"]) == 0

    capsys.readouterr()
    assert vidpost([*base, "--resume", "latest", "optim.lr=1e8", "train.max_steps=8"]) == 3
    err = capsys.readouterr().err
    line = re.search(r"error: [^\r\n]*", err).group(0)
    assert "Traceback" not in err and "lower optim.lr" in line, err[-3000:]
    named = Path(re.search(r"finite forward pass\): (\S+);", line).group(1))
    kept = sorted(p for p in (out / "checkpoints").glob("step_*[0-9]"))
    assert kept[-1] == named, f"{line}\nkept: {kept}"
    weights = load_file(str(named / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())

    assert vidpost([*base, "--resume", "latest", "optim.lr=1e-5", "train.max_steps=3"]) == 0
    err = capsys.readouterr().err
    assert "changed on resume: optim.lr 0.001 -> 1e-05, train.max_steps 1 -> 3" in err, err[-3000:]
    assert json.loads((out / "result.json").read_text())["steps"] == 3
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]  # the whole run: the good step, then the two after the resume
    assert [h["lr"] for h in history][1:] == [1e-5, 1e-5]
