"""Sequence parallelism (`vidpost.training.parallel`, Ulysses through diffusers' context parallelism): the layout
arithmetic and its one-line refusals; with 2 CPU processes over gloo, SP 2 equals the unsplit model for the forward
and the gradients, one SFT run's losses and weights, and a generation."""

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
from vidpost.models import load
from vidpost.training.parallel import Layout, ParallelConfig, check_supported, make_layout

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _report(
    what: str, losses: tuple[list[float], list[float]] | None = None, weights: tuple[dict, dict] | None = None
):
    """Print the measured gap between the one-process and the SP 2 run (`pytest -s` shows it)."""
    parts = []
    if losses is not None:
        rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(*losses, strict=True))
        parts.append(f"loss max rel diff {rel:.1e}")
    if weights is not None:
        a, b = weights
        parts.append(f"weights max abs diff {max(float((a[k] - b[k]).abs().max()) for k in a):.1e}")
    print(f"\n[SP 2 vs 1 process] {what}: " + ", ".join(parts))


def test_layout_arithmetic_and_refusals():
    layout = Layout(world=4, rank=3, sp=2, ring=1)
    assert (layout.dp_size, layout.dp_rank, layout.grad_scale) == (2, 1, 2.0)
    assert make_layout(ParallelConfig(), world=3, rank=2).dp_rank == 2  # no SP: every process is its own sample
    with pytest.raises(ValueError, match="must divide the number of processes"):
        make_layout(ParallelConfig(sp_degree=2), world=3)
    with pytest.raises(ValueError, match="ring_degree > 1 needs a GPU"):
        make_layout(ParallelConfig(ring_degree=2), world=2, device="cpu")
    with pytest.raises(ValueError, match=">= 1"):
        ParallelConfig(sp_degree=0)


def test_unsupported_combinations_are_one_line_errors(tiny_wan_dir, tiny_hunyuan_dir):
    from vidpost.models.attention import AttentionConfig, install_attention

    layout = Layout(world=2, rank=0, sp=2, ring=1)
    check_supported(load(tiny_wan_dir), layout)  # diffusers' own processors: supported
    with pytest.raises(ValueError, match="HunyuanVideoTransformer3DModel has no context-parallel plan"):
        check_supported(load(tiny_hunyuan_dir), layout)
    lit = load(tiny_wan_dir)
    install_attention(lit, AttentionConfig("lit"))
    with pytest.raises(ValueError, match="diffusers' own attention processors"):
        check_supported(lit, layout)
    with pytest.raises(ValueError, match="not divisible by sp_degree=3"):
        check_supported(load(tiny_wan_dir), Layout(world=3, rank=0, sp=3, ring=1))


@pytest.mark.parametrize("mode", ["sp", "sp_fsdp", "fsdp_dp"])
def test_forward_and_gradients_equal_the_unsplit_model_in_each_layout(mode, tiny_wan_dir, tmp_path):
    """SP 2; SP 2 with the model sharded over the same ranks (FSDP2); FSDP 2 × SP 1 (data parallel)."""
    out = tmp_path / "sp.json"
    port = {"sp": "29561", "sp_fsdp": "29568", "fsdp_dp": "29569"}[mode]
    res = subprocess.run(
        [*LAUNCH, "--master_port", port, str(ROOT / "tests" / "sp_worker.py"), str(tiny_wan_dir), str(out), mode],
        cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    if mode == "fsdp_dp":
        assert r["local_tokens"] == r["tokens"]  # each rank its own sample, whole
    else:
        assert r["local_tokens"] * 2 == r["tokens"]  # each rank's projections saw half of the video tokens
    print(f"\n[{mode}] forward max abs diff {r['forward_max_abs_diff']:.1e} (output max {r['forward_scale']:.2f}),"
          f" gradient max rel diff {r['grad_max_rel_diff']:.1e}")  # fmt: skip
    assert r["forward_max_abs_diff"] <= 1e-5 * max(1.0, r["forward_scale"])
    assert r["grad_max_rel_diff"] <= 1e-5 and r["grads"][0] == r["grads"][1] > 0


def test_sft_with_sp2_equals_one_process(tiny_wan_dir, tiny_manifest, tmp_path):
    from test_sft import _args

    from vidpost.pipelines.sft import SFTConfig, train

    train(load_config(SFTConfig, None, _args(tmp_path / "one", tiny_wan_dir, tiny_manifest)))
    cache = str(tmp_path / "one" / "cache")
    args = _args(tmp_path / "sp", tiny_wan_dir, tiny_manifest, **{"data.cache_dir": cache, "parallel.sp_degree": 2})
    res = subprocess.run(
        [*LAUNCH, "--master_port", "29562", "-m", "vidpost.pipelines.sft", *args],
        cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    h1 = [h["loss"] for h in json.loads((tmp_path / "one" / "history.json").read_text())]
    h2 = [h["loss"] for h in json.loads((tmp_path / "sp" / "history.json").read_text())]
    assert len(h1) == len(h2) == 4 and h1 == pytest.approx(h2, rel=1e-5)
    a = load_file(str(tmp_path / "one" / "final" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "sp" / "final" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    _report("SFT, 4 steps", (h1, h2), (a, b))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert json.loads((tmp_path / "sp" / "config.json").read_text())["parallel"]["sp_degree"] == 2
    # a checkpoint written at SP 2 resumes in one process: the same run
    part = _args(tmp_path / "part", tiny_wan_dir, tiny_manifest, **{"data.cache_dir": cache, "checkpoint.every": 2})
    res = subprocess.run(
        [*LAUNCH, "--master_port", "29567", "-m", "vidpost.pipelines.sft", *part, "train.max_steps=2", "parallel.sp_degree=2"],
        cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    train(load_config(SFTConfig, None, part), resume="latest")
    c = load_file(str(tmp_path / "part" / "final" / "pytorch_lora_weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], c[k], atol=1e-5, rtol=1e-4)


def test_generate_with_sp2_equals_one_process(tiny_wan_dir, tmp_path):
    import numpy as np
    from PIL import Image

    common = ["--model", str(tiny_wan_dir), "--prompt", "a red circle moves right", "--num-frames", "9"]
    common += ["--height", "32", "--width", "32", "--steps", "3", "--seed", "5", "--no-progress"]
    one = subprocess.run(
        [sys.executable, "generate.py", *common, "--out", str(tmp_path / "one.mp4")],
        cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [*LAUNCH, "--master_port", "29563", "generate.py", *common, "--sp", "2", "--out", str(tmp_path / "sp.mp4")],
        cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads((tmp_path / "sp.json").read_text())["parallel"] == {"sp_degree": 2, "ring_degree": 1}
    # the frames, as the lossless contact sheet holds them (the mp4 codec would turn a 1e-6 difference that flips a
    # pixel's rounding into a larger one), agree to one level of 255
    a = np.asarray(Image.open(tmp_path / "one.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "sp.png"), dtype=np.int16)
    print(
        f"\n[SP 2 vs 1 process] generation: max pixel diff {np.abs(a - b).max()} of 255, {(a != b).mean():.2%} differ"
    )
    assert a.shape == b.shape and np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01
    bad = subprocess.run(
        [sys.executable, "generate.py", *common, "--sp", "2", "--out", str(tmp_path / "x.mp4")],
        cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "torchrun --nproc_per_node 2" in bad.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("algorithm", ["grpo", "nft"])
def test_rl_update_with_sp2_equals_one_process(algorithm, tiny_wan_dir, tmp_path, grpo_overrides):
    from vidpost.pipelines.rl import RLConfig, train

    extra = [f"algorithm={algorithm}", "rollout.prompts_per_step=1", "rollout.height=32", "rollout.width=32"]
    extra += ["train.max_steps=2"] + (["rollout.sde=ode", "rollout.shared_noise=false"] if algorithm == "nft" else [])
    one = train(load_config(RLConfig, None, grpo_overrides(tmp_path / "one", tiny_wan_dir, *extra)))
    over = grpo_overrides(tmp_path / "sp", tiny_wan_dir, *extra, "parallel.sp_degree=2")
    port = {"grpo": "29564", "nft": "29565"}[algorithm]
    res = subprocess.run(
        [*LAUNCH, "--master_port", port, "-m", "vidpost.pipelines.rl", *over],
        cwd=ROOT, capture_output=True, text=True, env={**ENV, "CUDA_VISIBLE_DEVICES": ""}, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    history = json.loads((tmp_path / "sp" / "history.json").read_text())
    assert len(history) == len(one.history) == 2
    for h1, h2 in zip(one.history, history, strict=True):
        assert h1["reward"] == pytest.approx(h2["reward"], rel=1e-5)
        assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-4, abs=1e-7)
    a = load_file(str(one.final / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "sp" / "final" / "pytorch_lora_weights.safetensors"))
    _report(f"{algorithm}, 2 updates", ([h["loss"] for h in one.history], [h["loss"] for h in history]), (a, b))
    for k in a:  # Adam's first steps move every weight by ~lr: 1e-5 of it is rounding
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert any(float(v.abs().max()) > 1e-4 for k, v in a.items() if "lora_B" in k)  # the update moved the LoRA


def test_the_guard_is_refused_under_sp(tiny_wan_dir, tmp_path, grpo_overrides):
    from vidpost.pipelines.rl import RLConfig, set_up

    cfg = load_config(RLConfig, None, grpo_overrides(tmp_path, tiny_wan_dir, "guard.every=2", "parallel.sp_degree=2"))
    with pytest.raises(ValueError, match="must divide the number of processes"):
        set_up(cfg, None)  # one process cannot hold an SP group of 2
    cfg = load_config(RLConfig, None, grpo_overrides(tmp_path, tiny_wan_dir, "guard.every=2"))
    assert cfg.parallel.sp_degree == 1


def test_dmd2_with_sp2_equals_one_process(tiny_wan_dir, tmp_path):
    from test_dmd2 import _flat_overrides

    from vidpost.pipelines.distill_dmd2 import DMD2Config, train

    flat = dict(_flat_overrides(tmp_path, tiny_wan_dir, "one", "train.max_steps=2"))
    one = train(load_config(DMD2Config, None, [f"{k}={v}" for k, v in flat.items()]))
    flat |= {"output_dir": str(tmp_path / "sp"), "parallel.sp_degree": "2"}
    cmd = [*LAUNCH, "--master_port", "29566", "-m", "vidpost.pipelines.distill", "--method", "dmd2"]
    res = subprocess.run(
        [*cmd, *[f"{k}={v}" for k, v in flat.items()]],
        cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    history = json.loads((tmp_path / "sp" / "history.json").read_text())
    for h1, h2 in zip(one.history, history, strict=True):
        for k in ("loss_dmd", "loss_fake"):
            assert h1[k] == pytest.approx(h2[k], rel=1e-4), k
    a = load_file(str(one.final / "transformer" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "sp" / "final" / "transformer" / "diffusion_pytorch_model.safetensors"))
    _report("dmd2, 2 updates", ([h["loss_dmd"] for h in one.history], [h["loss_dmd"] for h in history]), (a, b))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "sp" / "samples").is_dir()


def test_memory_estimates_split_what_each_lever_splits():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sp_memory import estimate

    base = estimate("wan2.1-t2v-14b", 21, 90, 160, sp=1, fsdp=False, ckpt=False, gpus=8)
    assert base["tokens"] == 75_600 and 14.2e9 < base["params"] < 14.4e9
    assert base["states"] == pytest.approx(16 * base["params"])
    sp4 = estimate("wan2.1-t2v-14b", 21, 90, 160, sp=4, fsdp=True, ckpt=False, gpus=8)
    assert sp4["acts"] == pytest.approx(base["acts"] / 4) and sp4["states"] == pytest.approx(base["states"] / 8)
    ckpt = estimate("wan2.1-t2v-14b", 21, 90, 160, sp=1, fsdp=False, ckpt=True, gpus=8)
    assert ckpt["acts"] < base["acts"] / 10
