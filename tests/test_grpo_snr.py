"""`vidpost rl snr` and its maths: the signal share of known synthetic gradients, the permutation control, and
the gradient it measures being the one a GRPO training iteration steps along."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidpost.config import load_config
from vidpost.pipelines.grpo_snr import main, measure
from vidpost.pipelines.rl import RLConfig, train
from vidpost.rl.diagnostics import gradient_agreement, permute_within_groups


def _estimates(signal_sq: float, noise_sq: float, r: int, dim: int = 200_000, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, generator=g, dtype=torch.float64)
    mu *= math.sqrt(signal_sq) / mu.norm()
    return [mu + torch.randn(dim, generator=g, dtype=torch.float64) * math.sqrt(noise_sq / dim) for _ in range(r)]


@pytest.mark.parametrize(("signal_sq", "noise_sq"), [(1.0, 3.0), (1.0, 1.0), (1.0, 0.1)])
def test_signal_share_of_synthetic_estimates(signal_sq, noise_sq):
    out = gradient_agreement(_estimates(signal_sq, noise_sq, r=12))
    rho = signal_sq / (signal_sq + noise_sq)
    assert out["rho"] == pytest.approx(rho, abs=0.02)
    assert out["snr2"] == pytest.approx(signal_sq / noise_sq, rel=0.15)
    assert out["estimates_for_snr1"] == pytest.approx(noise_sq / signal_sq, rel=0.15)
    assert out["cos_mean"] == pytest.approx(rho, abs=0.03)
    assert out["pairs"] == 66


def test_pure_noise_has_no_signal_and_identical_estimates_are_all_signal():
    noise = gradient_agreement(_estimates(0.0, 1.0, r=10))
    assert abs(noise["rho"]) < 0.01 and abs(noise["cos_mean"]) < 0.01
    same = gradient_agreement([torch.ones(5)] * 3)
    assert same["rho"] == pytest.approx(1.0) and same["estimates_for_snr1"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least 2"):
        gradient_agreement([torch.ones(3)])


def test_permute_within_groups_keeps_each_groups_values():
    values = torch.arange(12.0)
    groups = torch.arange(3).repeat_interleave(4)
    out = permute_within_groups(values, groups, torch.Generator().manual_seed(0))
    assert not torch.equal(out, values)
    for gid in range(3):
        assert sorted(out[groups == gid].tolist()) == sorted(values[groups == gid].tolist())


@pytest.fixture
def overrides(tmp_path, tiny_wan_dir, grpo_overrides) -> list[str]:
    """The conftest miniature run, every SDE step trained, with plain AdamW steps (no clipping) for the sign check."""
    extra = ("train.micro_batch=3", "grpo.timestep_fraction=1.0", "optim.lr=1e-4", "optim.max_grad_norm=0")
    return grpo_overrides(tmp_path / "run", tiny_wan_dir, *extra)


def test_measured_gradient_is_the_first_training_step(tiny_wan_dir, overrides):
    res = measure(load_config(RLConfig, None, overrides), rollouts=2, device="cpu", keep_gradients=True)
    g0 = res["gradients"][0]
    assert g0.abs().max() > 0 and not torch.equal(g0, res["controls"][0])
    assert set(res["real"]) >= {"rho", "snr2", "estimates_for_snr1", "cos_mean"}

    # One AdamW step from the same start (zero-initialised LoRA B, so only B moves) steps by -lr·sign(g).
    run = train(load_config(RLConfig, None, [*overrides, "train.max_steps=1"]))
    lora = load_file(str(Path(run.final) / "pytorch_lora_weights.safetensors"))
    moved = torch.cat([lora[k].flatten() for k in sorted(lora) if "lora_B" in k])
    assert moved.numel() > 0
    # The measure's parameter order is the transformer's; its LoRA B entries are those that moved.
    b_grad = _b_entries(tiny_wan_dir, overrides, g0)
    strong = b_grad.abs() > 1e-3 * b_grad.abs().max()
    assert strong.sum() > 10
    assert torch.equal(torch.sign(moved[strong]), -torch.sign(b_grad[strong]))


def _b_entries(model: Path, overrides: list[str], flat: torch.Tensor) -> torch.Tensor:
    """The LoRA-B part of a flattened gradient, in the sorted key order the saved LoRA file is read back in."""
    from vidpost.pipelines.rl import load_policy

    adapter = load_policy(load_config(RLConfig, None, overrides), "cpu").adapter
    named = [(n, p) for n, p in adapter.transformer.named_parameters() if p.requires_grad]
    parts, i = {}, 0
    for n, p in named:
        parts[n] = flat[i : i + p.numel()]
        i += p.numel()
    assert i == flat.numel()
    keys = {
        "transformer." + n.replace(".lora_B.default.weight", ".lora_B.weight"): v
        for n, v in parts.items()
        if "lora_B" in n
    }
    return torch.cat([keys[k] for k in sorted(keys)])


def test_command_writes_its_report(tmp_path, overrides, capsys):
    out = tmp_path / "snr"
    code = main(["--rollouts", "2", "--out", str(out), "--device", "cpu", *overrides])
    assert code == 0
    printed = capsys.readouterr().out
    assert "gradient  rho" in printed and "control (permuted advantages)" in printed
    saved = json.loads((out / "grpo_snr.json").read_text())
    assert saved["videos_per_rollout"] == 6 and saved["rollouts"] == 2
    assert saved["real"]["pairs"] == 1


def test_one_rollout_is_an_error(overrides, capsys):
    assert main(["--rollouts", "1", *overrides]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_forward_algorithm_with_a_positive_control_and_the_pathwise_cosine(tmp_path, overrides, capsys):
    # nft on ODE rollouts with a differentiable reward: the estimate is compared with reward backprop through the
    # same rollouts; --control repeats everything on brightness
    extra = ["algorithm=nft", "rollout.sde=ode", "rollout.shared_noise=false", "rewards.spec={brightness: 1.0}"]
    out = tmp_path / "snr-nft"
    assert main(["--rollouts", "2", "--control", "brightness", "--out", str(out), *overrides, *extra]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("nft on brightness") and "positive control (brightness)" in printed
    saved = json.loads((out / "grpo_snr.json").read_text())
    pw = saved["pathwise"]
    assert -1 <= pw["cos_mean"] <= 1 and pw["draft_steps"] == 1
    assert saved["positive_control"]["algorithm"] == "nft"


def test_pathwise_needs_ode_last_steps(overrides):
    # GRPO with SDE on every step: the last step is stochastic, so no pathwise reading
    cfg = load_config(RLConfig, None, [*overrides, "rewards.spec={brightness: 1.0}"])
    assert "pathwise" not in measure(cfg, rollouts=2, device="cpu")
    cfg = load_config(RLConfig, None, [*overrides, "rewards.spec={brightness: 1.0}", "rollout.sde_window=[0, 3]"])
    assert "pathwise" in measure(cfg, rollouts=2, device="cpu")
