"""SFT stage: the loss maths, a real run on a miniature (bad data skipped, every trainable weight changes),
resume after a kill equals an uninterrupted run, 2 processes equal 1, NaN stops cleanly, LoRA loads in stock
diffusers and changes the output exactly as our sampler does."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidpost.config import load_config
from vidpost.models import load
from vidpost.models.sampling import sample
from vidpost.pipelines.sft import SFTConfig, TrainConfig, train
from vidpost.sections import OptimConfig
from vidpost.training.flow import flow_matching_loss, loss_weight, sample_sigmas
from vidpost.training.optim import lr_lambda
from vidpost.training.runner import TrainResult

ROOT = Path(__file__).resolve().parents[1]


def _args(tmp, model_dir, manifest, **extra):
    base = {
        "output_dir": str(tmp),
        "model.path": str(model_dir),
        "data.manifest": str(manifest),
        "data.buckets": "[[9, 32, 32]]",
        "train.batch_size": 2,
        "train.max_steps": 4,
        "checkpoint.every": 0,
        "validation.prompts": "[]",
        "log.tensorboard": "false",
        "optim.lr": "1e-3",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _cfg(*args) -> SFTConfig:
    return load_config(SFTConfig, None, list(args))


def test_flow_matching_loss_hand_worked():
    x0 = torch.tensor([[1.0, 2.0]])
    noise = torch.tensor([[0.0, 1.0]])
    pred = torch.tensor([[-1.0, 0.0]])  # target = noise - x0 = [-1, -1]; error = [0, 1]
    assert flow_matching_loss(pred, x0, noise, torch.ones(1)).item() == pytest.approx(0.5)
    assert loss_weight(torch.tensor([0.5]), "cosmap").item() == pytest.approx(2 / (math.pi * 0.5))


def test_sigma_sampling_and_lr_schedule():
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(10000, g, TrainConfig(timestep_sampling="uniform", shift=3.0))
    assert 0 < s.min() and s.max() < 1
    assert s.mean() > 0.6  # shift 3 pushes noise levels up (E[f(u)] ≈ 0.70 for uniform u)
    ln = sample_sigmas(10000, torch.Generator().manual_seed(0), TrainConfig(timestep_sampling="logit_normal"))
    assert abs(ln.mean() - 0.5) < 0.02 and ln.std() < 0.25
    opt = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_lambda(0, opt, 110) == pytest.approx(0.1)
    assert lr_lambda(9, opt, 110) == pytest.approx(1.0)
    assert lr_lambda(60, opt, 110) == pytest.approx(0.55)
    assert lr_lambda(110, opt, 110) == pytest.approx(0.1)


def test_sft_run_skips_bad_videos_and_changes_every_trainable_weight(tiny_wan_dir, tiny_manifest, tmp_path):
    cfg = _cfg(*_args(tmp_path, tiny_wan_dir, tiny_manifest, **{"train.max_steps": 2, "checkpoint.every": 1}))
    result = train(cfg)
    summary = json.loads((tmp_path / "cache" / "summary.json").read_text())
    assert summary == {"clips": 14, "encoded": 12, "bad_videos": 2, "shards_written": 1, "shards_skipped": 0}
    bad = [json.loads(x)["video"] for x in (tmp_path / "cache" / "bad_videos.jsonl").read_text().splitlines()]
    assert sorted(Path(b).name for b in bad) == ["corrupt.mp4", "missing.mp4"]
    first = load_file(str(tmp_path / "checkpoints" / "step_0000001" / "trainable.safetensors"))
    last = load_file(str(tmp_path / "checkpoints" / "step_0000002" / "trainable.safetensors"))
    assert first and all("lora" in k for k in first)
    adapter = load(tiny_wan_dir)
    from vidpost.training.lora import add_lora

    add_lora(adapter, cfg.lora)
    init = {n: p.detach() for n, p in adapter.transformer.named_parameters() if "lora" in n}
    # lora_B starts at zero, so lora_A only gets a gradient from the second step on.
    unchanged = [k for k in last if torch.equal(last[k], init[k].float())]
    assert not unchanged, unchanged[:3]
    assert len(result.history) == 2 and all(math.isfinite(h["loss"]) for h in result.history)
    assert result.kind == "lora" and result.final == tmp_path / "final" and result.steps == 2
    assert TrainResult.read(tmp_path).to_dict() == result.to_dict()  # the stage record a launched run leaves


def test_full_finetune_exports_a_loadable_model(tiny_wan_dir, tiny_manifest, tmp_path):
    cfg = _cfg(*_args(tmp_path, tiny_wan_dir, tiny_manifest, **{"lora.enabled": "false", "train.max_steps": 2}))
    train(cfg)
    base, tuned = load(tiny_wan_dir), load(tmp_path / "final")
    changed = [
        n
        for (n, a), (_, b) in zip(base.transformer.named_parameters(), tuned.transformer.named_parameters())
        if not torch.equal(a, b)
    ]
    assert len(changed) == len(list(base.transformer.parameters()))


def test_lora_loads_in_stock_diffusers_and_matches_our_sampler(tiny_wan_dir, tiny_manifest, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    cfg = _cfg(*_args(tmp_path, tiny_wan_dir, tiny_manifest, **{"optim.lr": "1e-2", "train.max_steps": 3}))
    train(cfg)
    lora_dir = tmp_path / "final"
    assert (lora_dir / "pytorch_lora_weights.safetensors").exists()
    kw = dict(num_frames=9, height=32, width=32, num_inference_steps=3, guidance_scale=4.0)
    ours = sample(load(tiny_wan_dir, lora=lora_dir), ["a red screen"], shift=3.0, seed=0, **kw)
    plain = sample(load(tiny_wan_dir), ["a red screen"], shift=3.0, seed=0, **kw)
    pipe = WanPipeline.from_pretrained(tiny_wan_dir)
    pipe.load_lora_weights(lora_dir)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        ["a red screen"], generator=torch.Generator().manual_seed(0), output_type="pt", max_sequence_length=16, **kw
    ).frames.permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=0)
    assert (ours - plain).abs().max() > 1e-3  # the LoRA really changes the output


def test_a_blow_up_keeps_a_verified_checkpoint_and_resumes_with_a_lower_lr(
    tiny_wan_dir, tiny_manifest, tmp_path, capsys
):
    """The user's case: the weights blow up after a good checkpoint; the stop names a checkpoint whose forward pass
    is finite (never one written after the blow-up), and resuming from it with a lower lr finishes."""
    from vidpost.pipelines.sft import main

    extra = {"checkpoint.every": 2, "train.max_steps": 2, "lora.enabled": "false", "optim.max_grad_norm": 0}
    args = _args(tmp_path, tiny_wan_dir, tiny_manifest, **extra)
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--resume", "latest", "optim.lr=1e6", "train.max_steps=12"]) == 3
    err = capsys.readouterr().err
    line = re.search(r"error: [^\r\n]*", err).group(0)
    assert "lower optim.lr" in line, line
    named = Path(re.search(r"finite forward pass\): (\S+);", line).group(1))
    assert named.name == "step_0000002", line
    newer = [p for p in (tmp_path / "checkpoints").glob("step_*[0-9]") if p.name > named.name]
    assert not newer, f"a checkpoint written after the blow-up was kept: {newer}"
    weights = load_file(str(named / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())

    assert main([*args, "--resume", "latest", "optim.lr=1e-4", "train.max_steps=6"]) == 0
    assert "optim.lr 0.001 -> 0.0001" in capsys.readouterr().err
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == 6
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in history)


def _run(args, env=None, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "vidpost.pipelines.sft", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        **kw,
    )


def test_killed_run_resumes_to_the_same_weights(tiny_wan_dir, tiny_manifest, tmp_path):
    common = {"train.max_steps": 150, "checkpoint.every": 10, "data.caption_dropout": 0.3}
    full = _cfg(*_args(tmp_path / "full", tiny_wan_dir, tiny_manifest, **common))
    train(full)
    # Share the latent cache so both runs see identical latents.
    common["data.cache_dir"] = str(tmp_path / "full" / "cache")
    args = _args(tmp_path / "killed", tiny_wan_dir, tiny_manifest, **common)
    proc = _run(args)
    ckpt_root = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpt_root.glob("step_*[0-9]")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(ckpt_root.glob("step_*[0-9]"))
    assert done, "the run was killed before its first checkpoint"
    assert not (tmp_path / "killed" / "final").exists(), "the run finished before it could be killed"
    resumed = _run([*args, "--resume", "latest"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    a = load_file(str(tmp_path / "full" / "final" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_processes_match_one_at_the_same_global_batch(tiny_wan_dir, tiny_manifest, tmp_path):
    one = _cfg(*_args(tmp_path / "one", tiny_wan_dir, tiny_manifest, **{"train.batch_size": 2}))
    train(one)
    cache = str(tmp_path / "one" / "cache")
    args = _args(tmp_path / "two", tiny_wan_dir, tiny_manifest, **{"train.batch_size": 1, "data.cache_dir": cache})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "vidpost.pipelines.sft"]
    res = subprocess.run(
        [*cmd, *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert res.returncode == 0, res.stderr[-3000:]
    h1 = [h["loss"] for h in json.loads((tmp_path / "one" / "history.json").read_text())]
    h2 = [h["loss"] for h in json.loads((tmp_path / "two" / "history.json").read_text())]
    assert len(h1) == len(h2) == 4
    assert h1 == pytest.approx(h2, rel=1e-5)
    a = load_file(str(tmp_path / "one" / "final" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "pytorch_lora_weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_grad_accumulation_1x8_equals_8x1(tiny_wan_dir, tiny_manifest, tmp_path):
    big = _cfg(*_args(tmp_path / "big", tiny_wan_dir, tiny_manifest, **{"train.batch_size": 4, "train.max_steps": 2}))
    train(big)
    cache = str(tmp_path / "big" / "cache")
    acc = _cfg(
        *_args(
            tmp_path / "acc",
            tiny_wan_dir,
            tiny_manifest,
            **{"train.batch_size": 1, "train.grad_accum": 4, "train.max_steps": 2, "data.cache_dir": cache},
        )
    )
    train(acc)
    h1 = [h["loss"] for h in json.loads((tmp_path / "big" / "history.json").read_text())]
    h2 = [h["loss"] for h in json.loads((tmp_path / "acc" / "history.json").read_text())]
    assert h1 == pytest.approx(h2, rel=1e-5)


def test_precompute_command_resumes_and_merge_lora_matches(tiny_wan_dir, tiny_manifest, tmp_path):
    from vidpost.pipelines.merge_lora import main as merge_main
    from vidpost.pipelines.precompute import main as pre_main

    args = _args(tmp_path, tiny_wan_dir, tiny_manifest, **{"data.shard_size": 4, "optim.lr": "1e-2"})
    assert pre_main(["--config", str(ROOT / "configs/shapes/sft.yaml"), *args]) == 0
    summary = json.loads((tmp_path / "cache" / "summary.json").read_text())
    assert summary["shards_written"] == 3 and summary["encoded"] == 12
    (tmp_path / "cache" / "shard_00001.safetensors").unlink()  # as if interrupted while writing shard 1
    assert pre_main(["--config", str(ROOT / "configs/shapes/sft.yaml"), *args]) == 0
    summary = json.loads((tmp_path / "cache" / "summary.json").read_text())
    assert (summary["shards_written"], summary["shards_skipped"], summary["encoded"]) == (1, 2, 12)

    train(_cfg(*args))
    assert (
        merge_main(["--base", str(tiny_wan_dir), "--lora", str(tmp_path / "final"), "--out", str(tmp_path / "m")]) == 0
    )
    kw = dict(num_frames=5, height=32, width=32, num_inference_steps=2, guidance_scale=3.0, shift=3.0, seed=0)
    merged = sample(load(tmp_path / "m"), ["a blue screen"], **kw)
    with_lora = sample(load(tiny_wan_dir, lora=tmp_path / "final"), ["a blue screen"], **kw)
    torch.testing.assert_close(merged, with_lora, atol=1e-4, rtol=0)
    assert not any("lora" in k for k in load_file(str(tmp_path / "m/transformer/diffusion_pytorch_model.safetensors")))
