"""Fault injection: what a user meets when files are damaged or combined wrongly gets one line and a fix, never a
traceback, and nothing is silently wrong."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from vidpost.models import LoraBaseMismatch, ModelPathError, WanAdapter, load
from vidpost.models.provenance import lora_base, model_fingerprint, stamp_lora
from vidpost.sections import LoraConfig
from vidpost.training.lora import add_lora, lora_state_dict


def test_truncated_weights_are_one_line_exit_2(tiny_wan_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_wan_dir, broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelPathError, match="truncated or corrupt"):
        load(broken)
    out = subprocess.run(
        [sys.executable, "-m", "vidpost.cli", "generate", "--model", str(broken), "--prompt", "a dot"]
        + ["--out", str(tmp_path / "x.mp4")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "truncated or corrupt" in lines[0], out.stderr


@pytest.fixture(scope="module")
def two_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    a, b = root / "wan-a", root / "wan-b"
    WanAdapter.tiny(seed=0).save_pretrained(a)
    WanAdapter.tiny(seed=1).save_pretrained(b)
    lora = root / "lora"
    adapter = load(a)
    add_lora(adapter, LoraConfig(rank=2, alpha=2.0))
    adapter.save_lora(lora, lora_state_dict(adapter.transformer))
    stamp_lora(lora, a)
    return a, b, lora


def test_a_lora_on_another_base_warns_with_both_names(two_bases):
    a, b, lora = two_bases
    assert model_fingerprint(a) != model_fingerprint(b)
    assert lora_base(lora)["name"].endswith("wan-a")
    with pytest.warns(LoraBaseMismatch) as caught:
        load(b, lora=lora)
    message = str(caught[0].message)
    assert "wan-a" in message and "wan-b" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraBaseMismatch)
        load(a, lora=lora)  # its own base: no warning


def test_stamped_lora_still_loads_in_stock_diffusers(two_bases):
    a, _, lora = two_bases
    pipe = load(a).pipeline()
    pipe.load_lora_weights(str(lora))


# -- the recovery pieces every trainer uses ---------------------------------------------------------------------------


def test_resume_changes_allow_the_schedule_and_refuse_the_rest():
    from vidpost.training.recovery import describe_changes, resume_changes

    saved = {"optim": {"lr": 2e-3, "betas": [0.9, 0.999]}, "train": {"max_steps": 4, "seed": 0}, "log": {"every": 1}}
    new = {"optim": {"lr": 1e-5, "betas": [0.9, 0.999]}, "train": {"max_steps": 8, "seed": 0}, "log": {"every": 5}}
    changed = resume_changes(saved, new)
    assert [k for k, _, _ in changed] == ["log.every", "optim.lr", "train.max_steps"]
    assert "optim.lr 0.002 -> 1e-05" in describe_changes(changed)
    with pytest.raises(ValueError, match="train.seed"):
        resume_changes(saved, {**new, "train": {"max_steps": 8, "seed": 1}})
    with pytest.raises(ValueError, match="optim.betas"):
        resume_changes(saved, {**new, "optim": {"lr": 1e-5, "betas": [0.5, 0.999]}})
    assert resume_changes(saved, saved) == []


def _scheduled(lr: float, max_steps: int):
    import torch

    from vidpost.sections import OptimConfig
    from vidpost.training.optim import lr_lambda

    cfg = OptimConfig(lr=lr, warmup_steps=1, schedule="cosine")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, cfg, max_steps))
    return opt, sched


def test_rebuild_schedule_applies_a_new_lr_and_is_exact_when_nothing_changed():
    from vidpost.training.recovery import rebuild_schedule

    opt, sched = _scheduled(2e-3, 10)
    for _ in range(3):
        opt.step()
        sched.step()
    state_o, state_s = opt.state_dict(), sched.state_dict()
    expected = opt.param_groups[0]["lr"]

    same_o, same_s = _scheduled(2e-3, 10)
    same_o.load_state_dict(state_o)
    same_s.load_state_dict(state_s)
    rebuild_schedule(same_o, same_s, 2e-3)
    assert same_o.param_groups[0]["lr"] == expected  # bitwise: resume without changes is unchanged

    new_o, new_s = _scheduled(1e-5, 10)
    new_o.load_state_dict(state_o)
    new_s.load_state_dict(state_s)
    assert new_o.param_groups[0]["lr"] == expected  # what restoring alone does: the old lr wins
    rebuild_schedule(new_o, new_s, 1e-5)
    assert new_o.param_groups[0]["lr"] == pytest.approx(expected / 200)
    new_o.step()
    new_s.step()
    assert new_s.get_last_lr()[0] < 1e-5


def test_nonfinite_names_what_broke():
    import torch

    from vidpost.training.recovery import nonfinite

    assert nonfinite(loss=1.0, grad_norm=torch.tensor(2.0), params=[torch.ones(2)]) is None
    assert nonfinite(loss=float("nan")) == "loss"
    assert nonfinite(loss=1.0, grad_norm=float("inf")) == "gradient norm"
    assert nonfinite(loss=1.0, params=[torch.ones(2), torch.tensor([1.0, float("nan")])]) == "weights"


def test_verifier_skips_checkpoints_whose_forward_is_not_finite(tmp_path):
    import torch

    from vidpost.training.checkpoint import latest_checkpoint
    from vidpost.training.recovery import Verifier

    model = torch.nn.Linear(2, 2)
    weights = {1: 1.0, 2: 1.0e3, 3: float("inf")}  # step 3's weights overflow; step 2's are large but finite
    paths = []
    for step, scale in weights.items():
        p = tmp_path / f"step_{step:07d}"
        p.mkdir()
        (p / "state.json").write_text("{}")
        torch.save({"scale": scale}, p / "w.pt")
        paths.append(p)

    def load(path):
        scale = torch.load(path / "w.pt")["scale"]
        with torch.no_grad():
            model.weight.fill_(scale)
        return [model.weight]

    verifier = Verifier(load, lambda: model(torch.full((1, 2), 1e36)))
    usable = verifier.usable(paths)
    assert usable == paths[0]  # 1e3 * 1e36 overflows too: only step 1 passes
    assert (tmp_path / "step_0000003.bad").exists() and (tmp_path / "step_0000002.bad").exists()
    assert latest_checkpoint(tmp_path) == paths[0]


def test_a_stop_names_the_newest_checkpoint_that_passes_and_moves_the_others_aside(tmp_path):
    import torch

    from vidpost.pipelines.sft import SFTConfig
    from vidpost.training.checkpoint import Checkpoints, NoDataPosition, latest_checkpoint, save_checkpoint
    from vidpost.training.runner import NonFiniteLoss

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    x = torch.randn(2, 4)
    ckpts = Checkpoints(tmp_path, SFTConfig(), model, opt, sched, probe=lambda: model(x))
    assert ckpts.resume(None) == 0
    ckpts.save(1)
    ckpts.save(2)
    with torch.no_grad():  # weights that blew up without overflowing: the probe is finite but 1e6x too large
        model.weight.mul_(1e6)
    with pytest.raises(NonFiniteLoss, match=r"probe batch became .*x the RMS it had at the start.* at step 3"):
        ckpts.save(3)
    assert not (tmp_path / "checkpoints" / "step_0000003").exists()
    # what a version without the probe would have written (the stop above put step 2's weights back in the model):
    with torch.no_grad():
        model.weight.mul_(1e6)
    save_checkpoint(tmp_path / "checkpoints", 3, model, opt, sched, NoDataPosition(), None, 5, {})
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss) as stop:
        ckpts.check_step(4, loss=1.0, grad_norm=2.0)
    message = str(stop.value)
    assert "trainable weights became non-finite at step 4" in message
    assert "step_0000002; resume from it with a lower optim.lr" in message
    assert (tmp_path / "checkpoints" / "step_0000003.bad").exists()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_0000002"
    with pytest.raises(NonFiniteLoss, match="gradient norm became inf at step 5"):
        ckpts.check_step(5, loss=1.0, grad_norm=torch.tensor(float("inf")))


@pytest.mark.parametrize("flag", ["--steps", "--num-frames", "--height", "--width"])
def test_sizes_and_steps_of_zero_are_one_line_errors(tiny_wan_dir, tmp_path, flag, capsys):
    from vidpost.pipelines.generate import main

    rc = main(["--model", str(tiny_wan_dir), "--prompt", "a dot", flag, "0", "--out", str(tmp_path / "x.mp4")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {flag} must be positive, got 0"
    ]
    assert not (tmp_path / "x.mp4").exists()


def test_resume_from_a_missing_folder_is_one_line(tiny_wan_dir, tiny_manifest, tmp_path, capsys):
    from vidpost.pipelines.sft import main

    args = [f"output_dir={tmp_path}", f"model.path={tiny_wan_dir}", f"data.manifest={tiny_manifest}"]
    args += ["data.buckets=[[9, 32, 32]]", "train.max_steps=1", "validation.prompts=[]", "log.tensorboard=false"]
    assert main([*args, "--resume", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1 and "not a checkpoint folder" in errors[0], err


def test_checkpoint_writes_are_synced_before_the_rename(tmp_path, monkeypatch):
    import os

    import torch

    from vidpost import outputs
    from vidpost.training.checkpoint import NoDataPosition, save_checkpoint

    events = []
    monkeypatch.setattr(outputs, "fsync_tree", lambda p: events.append(("sync", p.name)))
    real_replace = os.replace
    monkeypatch.setattr(outputs.os, "replace", lambda a, b: (events.append(("rename", a.name)), real_replace(a, b)))
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(tmp_path, 3, model, opt, sched, NoDataPosition(), None, 2, {})
    assert events[:2] == [("sync", "step_0000003.tmp"), ("rename", "step_0000003.tmp")]


def _sft_args(tmp_path, tiny_wan_dir, tiny_manifest, *extra):
    args = [f"output_dir={tmp_path}", f"model.path={tiny_wan_dir}", f"data.manifest={tiny_manifest}"]
    args += ["data.buckets=[[9, 32, 32]]", "train.batch_size=2", "validation.prompts=[]", "log.tensorboard=false"]
    return [*args, "checkpoint.every=1", "checkpoint.keep_last=3", "optim.lr=2e-3", *extra]


def test_an_lr_given_on_resume_takes_effect_and_history_continues(tiny_wan_dir, tiny_manifest, tmp_path, capsys):
    from vidpost.pipelines.sft import main

    assert main(_sft_args(tmp_path, tiny_wan_dir, tiny_manifest, "train.max_steps=2")) == 0
    args = _sft_args(tmp_path, tiny_wan_dir, tiny_manifest, "train.max_steps=4", "optim.lr=1e-5")
    assert main([*args, "--resume", "latest"]) == 0
    assert "changed on resume: optim.lr 0.002 -> 1e-05, train.max_steps 2 -> 4" in capsys.readouterr().err
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert [h["lr"] for h in history] == [2e-3, 2e-3, 1e-5, 1e-5]


def test_a_change_that_cannot_apply_on_resume_is_refused(tiny_wan_dir, tiny_manifest, tmp_path, capsys):
    from vidpost.pipelines.sft import main

    assert main(_sft_args(tmp_path, tiny_wan_dir, tiny_manifest, "train.max_steps=1")) == 0
    args = _sft_args(tmp_path, tiny_wan_dir, tiny_manifest, "train.max_steps=2", "train.seed=5")
    assert main([*args, "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume with train.seed=5" in err and "Traceback" not in err
    # a change of the weights' shapes is refused the same way (not a shape mismatch while loading)
    args = _sft_args(tmp_path, tiny_wan_dir, tiny_manifest, "train.max_steps=2", "lora.rank=8")
    assert main([*args, "--resume", "latest"]) == 2
    assert "cannot resume with lora.rank=8" in capsys.readouterr().err


def test_a_missing_manifest_names_the_command_that_makes_it_before_loading_the_model(tmp_path, capsys, monkeypatch):
    from vidpost.pipelines import sft

    monkeypatch.setattr(sft, "load", lambda *a, **k: pytest.fail("the model was loaded before the data was checked"))
    config = str(Path(__file__).resolve().parents[1] / "configs" / "shapes" / "sft-lora.yaml")
    assert sft.main(["--config", config, f"output_dir={tmp_path}", f"data.manifest={tmp_path}/data/m.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"vidpost shapes export --out {tmp_path}/data --split train" in err and "data.manifest=" in err


def test_a_trained_lora_carries_its_base_and_warns_on_another(tiny_wan_dir, tiny_manifest, two_bases, tmp_path):
    from vidpost.pipelines.sft import main

    args = [f"output_dir={tmp_path}", f"model.path={tiny_wan_dir}", f"data.manifest={tiny_manifest}"]
    args += ["data.buckets=[[9, 32, 32]]", "train.max_steps=1", "validation.prompts=[]", "log.tensorboard=false"]
    assert main(args) == 0
    lora = tmp_path / "final"
    assert lora_base(lora)["fingerprint"] == model_fingerprint(tiny_wan_dir)
    _, other, _ = two_bases
    with pytest.warns(LoraBaseMismatch, match="wan-b"):
        load(other, lora=lora)


def test_kill_9_during_a_checkpoint_write_resumes_from_the_previous_one(tiny_wan_dir, tiny_manifest, tmp_path, capsys):
    """The process dies with step 3's files written but not yet renamed into place: `--resume latest` takes step 2,
    and the run finishes with the whole history."""
    from vidpost.pipelines.sft import main

    args = _sft_args(tmp_path, tiny_wan_dir, tiny_manifest, "train.max_steps=4")
    marker = tmp_path / "writing"
    script = f"""
import pathlib, sys, time
from vidpost import outputs
real = outputs.fsync_tree
def slow(path):
    if path.name == "step_0000003.tmp":
        pathlib.Path({str(marker)!r}).write_text("in the write")
        time.sleep(600)
    real(path)
outputs.fsync_tree = slow
from vidpost.pipelines.sft import main
sys.exit(main({args!r}))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the run never reached its third checkpoint"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_0000001", "step_0000002", "step_0000003.tmp"]
    assert main([*args, "--resume", "latest"]) == 0
    assert f"resumed from {root / 'step_0000002'} at step 2" in capsys.readouterr().err
    assert not (root / "step_0000003.tmp").exists() and (root / "step_0000004").is_dir()
    assert [h["step"] for h in json.loads((tmp_path / "history.json").read_text())] == [1, 2, 3, 4]
