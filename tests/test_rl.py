"""`vidpost rl` on a miniature Wan: each forward-process algorithm (nft, awm, rsft) moves every trainable tensor and
resumes exactly; the update's identities (NFT with r ≡ ½ and θ = θ_old has no gradient; AWM's ratio is exactly 1
on an iteration's first step and clipped on later ones; RSFT with k = G trains on every sample); algorithm grpo is
its own module's update; settings an algorithm cannot run with are one-line errors; presets written before the
algorithm sections load with their keys moved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidpost.config import load_config
from vidpost.pipelines.rl import RLConfig, main, train
from vidpost.rl.algorithms import nft, rsft
from vidpost.rl.algorithms.forward import ForwardBatch, ForwardStats, OldPolicy, forward_update

FORWARD = ("rollout.sde=ode", "rollout.shared_noise=false")


@pytest.fixture
def cfg_for(tmp_path, tiny_wan_dir, grpo_overrides):
    def make(name: str, algorithm: str, *extra: str) -> RLConfig:
        over = grpo_overrides(tmp_path / name, tiny_wan_dir, f"algorithm={algorithm}", *FORWARD, *extra)
        return load_config(RLConfig, None, over)

    return make


def _lora(result) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result.final) / "pytorch_lora_weights.safetensors"))


@pytest.mark.parametrize("algorithm", ["nft", "awm", "rsft"])
def test_every_trainable_tensor_moves(algorithm, cfg_for):
    # LoRA B starts at zero, so A has no gradient on the first step: two steps move every tensor.
    before = _lora(train(cfg_for(f"{algorithm}0", algorithm, "train.max_steps=1", "optim.lr=0")))
    after = _lora(train(cfg_for(algorithm, algorithm, "train.max_steps=2", "optim.max_grad_norm=0")))
    assert before.keys() == after.keys() and after
    unchanged = [k for k in after if torch.equal(after[k], before[k])]
    assert not unchanged, f"{len(unchanged)} LoRA tensors did not change, e.g. {unchanged[:3]}"


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_resume_equals_uninterrupted(algorithm, cfg_for):
    # nft's old policy lags θ from the second iteration on (decay rate 0.2 here): the checkpoint must keep it
    common = ("checkpoint.every=2", "optim.schedule=constant", "nft.old_decay_rate=0.2")
    common += ("train.micro_batch=3", "train.updates_per_iteration=2")
    full = train(cfg_for(f"{algorithm}-full", algorithm, "train.max_steps=4", *common))
    train(cfg_for(f"{algorithm}-part", algorithm, "train.max_steps=2", *common))
    resumed = train(cfg_for(f"{algorithm}-part", algorithm, "train.max_steps=4", *common), resume="latest")
    assert [h["reward"] for h in resumed.history] == [h["reward"] for h in full.history[2:]]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history[2:]]
    a, b = _lora(full), _lora(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_awm_ratio_is_one_first_then_clipped(cfg_for):
    # one optimizer step per iteration: the ratio compares θ with the sampling weights, equal → exactly 1
    one = train(cfg_for("awm1", "awm", "train.max_steps=2"))
    assert all(h["ratio_min"] == 1.0 == h["ratio_max"] and h["clip_fraction"] == 0.0 for h in one.history)
    # three steps per iteration at a large learning rate: the later steps see ratios ≠ 1 and the clip acts
    extra = ("train.max_steps=1", "train.micro_batch=2", "train.updates_per_iteration=3", "optim.lr=0.05")
    three = train(cfg_for("awm3", "awm", *extra))
    assert three.history[0]["clip_fraction"] > 0.0


def test_rsft_keeps_the_best_k_of_each_group(cfg_for):
    best = train(cfg_for("rsft1", "rsft", "train.max_steps=1", "rsft.k=1")).history[0]
    every = train(cfg_for("rsft3", "rsft", "train.max_steps=1", "rsft.k=3")).history[0]
    assert best["trained"] == 2 and every["trained"] == 6  # 2 prompts × 3 samples


def _tiny_batch(tiny_wan_dir, n=4):
    from vidpost.models import load
    from vidpost.sections import LoraConfig
    from vidpost.training.lora import add_lora

    adapter = load(tiny_wan_dir)
    add_lora(adapter, LoraConfig(enabled=True, rank=4))
    for p in adapter.transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    with torch.no_grad():  # a non-zero LoRA, so that every LoRA tensor has a gradient
        for name, p in adapter.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    x0 = torch.randn(adapter.latent_shape(n, 5, 16, 16), generator=torch.Generator().manual_seed(0))
    cond = adapter.encode_prompt(["a red circle moves right"] * n)
    sigmas = torch.tensor([[0.9, 0.5]] * n)
    return adapter, ForwardBatch(x0, cond, None, sigmas, torch.arange(n))


def _grads(adapter) -> list[torch.Tensor]:
    return [p.grad.clone() for p in adapter.transformer.parameters() if p.requires_grad and p.grad is not None]


def test_nft_with_half_optimality_and_the_old_policy_equal_has_no_gradient(tiny_wan_dir):
    adapter, batch = _tiny_batch(tiny_wan_dir)
    model = adapter.transformer
    old = OldPolicy(model)
    kw = {"loss": nft.loss(RLConfig()), "seed": 0, "step": 0, "model": model, "old": old}
    forward_update(adapter, batch, torch.zeros(4), [torch.arange(4)], ForwardStats(), **kw)
    grads = _grads(adapter)
    assert grads and all(g.abs().max() == 0 for g in grads)
    # with the old policy computed by its own forward pass (not v_θ detached), the gradient is zero to round-off
    model.zero_grad(set_to_none=True)
    old.current = False
    forward_update(adapter, batch, torch.zeros(4), [torch.arange(4)], ForwardStats(), **kw)
    assert max(float(g.abs().max()) for g in _grads(adapter)) < 1e-6
    # a positive advantage gives a gradient, and the negative one its opposite (v_θ = v_old: ∝ 2r − 1)
    model.zero_grad(set_to_none=True)
    old.current = True
    forward_update(adapter, batch, torch.ones(4), [torch.arange(4)], ForwardStats(), **kw)
    pos = _grads(adapter)
    model.zero_grad(set_to_none=True)
    forward_update(adapter, batch, -torch.ones(4), [torch.arange(4)], ForwardStats(), **kw)
    neg = _grads(adapter)
    scale = max(float(p.abs().max()) for p in pos)
    assert scale > 0
    for p, q in zip(pos, neg):  # float32 sums: an element far below the largest carries round-off of ~1e-7 of it
        torch.testing.assert_close(p, -q, rtol=1e-5, atol=1e-6 * scale)


def test_rsft_gradient_is_the_flow_matching_gradient_on_all_samples(tiny_wan_dir):
    from vidpost.seeding import step_generator
    from vidpost.training.flow import flow_matching_loss

    adapter, batch = _tiny_batch(tiny_wan_dir)
    model = adapter.transformer
    kw = {"loss": rsft.loss(RLConfig()), "seed": 3, "step": 7, "model": model}
    forward_update(adapter, batch, torch.zeros(4), [torch.arange(4)], ForwardStats(), **kw)
    got = _grads(adapter)
    model.zero_grad(set_to_none=True)
    gens = [step_generator(3, 7, i, 4) for i in range(4)]
    for k in range(2):  # the same noise, by hand: the mean flow-matching loss over samples and noise levels
        eps = torch.stack([torch.randn(batch.x0.shape[1:], generator=g) for g in gens])
        s = batch.sigmas[:, k].view(-1, 1, 1, 1, 1)
        v = adapter.predict_velocity((1 - s) * batch.x0 + s * eps, batch.sigmas[:, k], batch.cond)
        (flow_matching_loss(v, batch.x0, eps, torch.ones(4)).mean() / 2).backward()
    for a, b in zip(got, _grads(adapter)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_draft_trains_on_the_rollouts_own_videos(cfg_for):
    # the update re-takes the rollout's last K steps with gradients: the same videos, so its loss is minus the
    # logged reward; every LoRA tensor moves after two steps
    spec = "rewards.spec={brightness: 1.0}"
    before = _lora(train(cfg_for("draft0", "draft", spec, "train.max_steps=1", "optim.lr=0")))
    run = train(cfg_for("draft", "draft", spec, "train.max_steps=2", "draft.steps=2", "optim.max_grad_norm=0"))
    for h in run.history:
        assert h["loss"] == pytest.approx(-h["reward"], abs=1e-5)
        assert h["reward_differentiable_mean"] == pytest.approx(h["reward"], abs=1e-5)
    after = _lora(run)
    assert not [k for k in after if torch.equal(after[k], before[k])]


@pytest.mark.parametrize("algorithm", ["grpo", "nft", "awm", "rsft", "draft"])
def test_each_algorithm_runs_its_own_update(cfg_for, monkeypatch, algorithm):
    from vidpost.rl.algorithms import algorithm_module

    class Ran(Exception):
        pass

    def update(run, ro, advantages):
        raise Ran(run.cfg.algorithm)

    monkeypatch.setattr(algorithm_module(algorithm), "update", update)
    extra = ("rollout.sde=dance", "rollout.shared_noise=true") if algorithm == "grpo" else ()
    extra += ("rewards.spec={brightness: 1.0}",) if algorithm == "draft" else ()
    with pytest.raises(Ran, match=algorithm):
        train(cfg_for(f"u-{algorithm}", algorithm, *extra, "train.max_steps=1"))


def test_presets_written_before_the_algorithm_sections_still_load(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text(
        "algorithm: nft\ntrain: {timestep_fraction: 0.3}\nforward: {nft_beta: 2.0, old_decay_rate: 0.2, rsft_k: 3,"
        " draft_steps: 2, awm_weighting: t, rsft_min_advantage: 0.5, old_decay_cap: 0.4}\n"
    )
    cfg = load_config(RLConfig, old)
    assert (cfg.grpo.timestep_fraction, cfg.nft.beta, cfg.nft.old_decay_rate, cfg.nft.old_decay_cap) == (
        0.3,
        2.0,
        0.2,
        0.4,
    )
    assert (cfg.rsft.k, cfg.rsft.min_advantage, cfg.draft.steps, cfg.awm.weighting) == (3, 0.5, 2, "t")
    err = capsys.readouterr().err
    assert "warning: config key 'forward.nft_beta' is now 'nft.beta'" in err
    with pytest.raises(ValueError, match="'forward.nft_beta' is the old name of 'nft.beta'"):
        load_config(RLConfig, old, ["nft.beta=3.0"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("algorithm=grpo",), "needs SDE steps"),
        (("algorithm=nft", "rollout.shared_noise=true"), "identical"),
        (("algorithm=rsft", "rsft.k=null"), "rsft.k or"),
        (("algorithm=nft", "train.ema_decay=0.9", "train.max_steps=1"), "ema_decay must be 0"),
        (("algorithm=draft", "rollout.sde=dance"), "differentiates the ODE"),
        (("algorithm=draft", "draft.steps=5"), "draft.steps must be in 1..4"),
        (("algorithm=draft", "train.max_steps=1"), "not differentiable: motion, temporal"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, tiny_wan_dir, grpo_overrides, extra, message, capsys):
    over = grpo_overrides(tmp_path / "bad", tiny_wan_dir, *FORWARD, *extra)
    assert main(over) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and message in err[-1] and err[-1].startswith("error:")


def test_rl_compare_trains_each_algorithm_once_and_writes_its_table(
    tmp_path, tiny_wan_dir, grpo_overrides, monkeypatch
):
    from vidpost.pipelines.rl_compare import main as compare

    over = [o for o in grpo_overrides(tmp_path / "unused", tiny_wan_dir) if not o.startswith(("output_dir", "model."))]
    args = [
        "--algorithms",
        "rsft",
        "grpo-indep",
        "--videos",
        "6",
        "--limit",
        "1",
        "--seeds",
        "1",
        "--size",
        "5",
        "16",
        "16",
    ]
    args += ["--model", str(tiny_wan_dir), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *over]
    assert compare(args) == 0
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| rsft |" in text and "| grpo-indep |" in text and (tmp_path / "out" / "curves.png").stat().st_size > 0
    rows = __import__("json").loads((tmp_path / "out" / "results.json").read_text())
    assert [r["videos"] for r in rows[1:]] == [6, 6]
    wall = (tmp_path / "work" / "rsft" / "wall.json").read_text()
    import vidpost.pipelines.rl_compare as rl_compare

    def no_evaluation(*a, **k):
        raise AssertionError("a finished run was evaluated again")

    monkeypatch.setattr(rl_compare, "held_out", no_evaluation)
    assert compare(args) == 0  # finished runs are neither trained nor evaluated again
    assert (tmp_path / "work" / "rsft" / "wall.json").read_text() == wall
    assert __import__("json").loads((tmp_path / "out" / "results.json").read_text()) == rows
    # another evaluation setting is evaluated afresh
    with pytest.raises(AssertionError, match="evaluated again"):
        compare([*args[:6], "2", *args[7:]])


def test_nft_two_processes_match_one(tmp_path, tiny_wan_dir, cfg_for, grpo_overrides):
    # each sample's noise levels and noise come from its global index: 2 processes × 1 prompt = 1 process × 2
    import json
    import os
    import subprocess
    import sys

    common = ("train.max_steps=2", "nft.old_decay_rate=0.3")
    one = train(cfg_for("one", "nft", "train.micro_batch=3", *common))
    out = tmp_path / "two"
    over = grpo_overrides(out, tiny_wan_dir, "algorithm=nft", *FORWARD, "rollout.prompts_per_step=1")
    over += ["train.micro_batch=3", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    proc = subprocess.run([*cmd, "-m", "vidpost.pipelines.rl", *over], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    for h1, h2 in zip(one.history, history, strict=True):
        assert h1["reward"] == pytest.approx(h2["reward"], rel=1e-5)
    a, b = _lora(one), load_file(str(out / "final" / "pytorch_lora_weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
