"""Faults: every writer's output is complete or absent after a kill at any moment of writing it, and the next command
does the right thing (resume finishes, generate refuses with one line); then the reliability table, row by row (a
fresh-clone try with faults injected: bad files, a busy folder, a full disk, bad numbers, sizes a model cannot make),
each row a test of the first line the user now sees.

The kills are real: `tests/fault_child.py` runs the command in a subprocess that SIGKILLs itself at the armed point
(`files`: once the output's `.tmp` folder holds K files; `before_rename`; `mid_rename`: the previous output moved
aside, the new one not yet in place), so no clean-up code runs. A test checks that the fault fired (the child died
of SIGKILL) before it checks the disk."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vidpost.models import ModelPathError, load

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("fault_child.py")
INT8 = str(ROOT / "configs" / "quant" / "w8a8-int8.yaml")
W4A4 = str(ROOT / "configs" / "quant" / "w4a4-int4.yaml")


def run_killed(point: str, path: Path, args: list[str], k: int = 1) -> None:
    """Run `vidpost ARGS` with the fault armed on the output `path`; assert the fault fired."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(CHILD), point, str(path), str(k), "--", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == -signal.SIGKILL, (
        f"the fault never fired (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


def tree_hash(path: Path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def assert_previous_or_none(path: Path, previous: dict[str, str] | None) -> None:
    """The final name holds the previous complete output, or nothing (a kill between the two renames leaves the
    previous one at `<path>.old`, which the next write or `outputs.recover` puts back)."""
    from vidpost.outputs import recover

    old = path.with_name(path.name + ".old")
    if path.exists():
        assert previous is not None and tree_hash(path) == previous, f"{path} is not the previous complete output"
    elif old.exists():
        assert previous is not None and tree_hash(old) == previous
        recover(path)
        assert tree_hash(path) == previous and not old.exists()


def one_error_line(err: str) -> str:
    """The one error line of a command's stderr (progress bars redraw with carriage returns around it)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def sft_args(out: Path, model: Path, manifest: Path, *extra: str) -> list[str]:
    args = [f"output_dir={out}", f"model.path={model}", f"data.manifest={manifest}", "data.buckets=[[9, 32, 32]]"]
    args += ["train.batch_size=2", "validation.prompts=[]", "log.tensorboard=false", "checkpoint.every=1"]
    return ["sft", *args, *extra]


# ---- every writer: a kill leaves the previous complete output or none ---------------------------------------------


def test_sft_killed_while_exporting_leaves_no_final_and_resume_finishes(tmp_path, tiny_wan_dir, tiny_manifest):
    from vidpost.cli import main

    out = tmp_path / "sft"
    args = sft_args(out, tiny_wan_dir, tiny_manifest, "train.max_steps=2")
    run_killed("files", out / "final", args, k=1)
    assert not (out / "final").exists() and (out / "checkpoints" / "step_0000002").is_dir()
    with pytest.raises(ModelPathError, match="does not exist"):
        load(tiny_wan_dir, lora=out / "final")
    assert main([*args, "--resume", "latest"]) == 0
    load(tiny_wan_dir, lora=out / "final")


def test_rl_killed_mid_rename_keeps_the_previous_final(tmp_path, tiny_wan_dir, grpo_overrides):
    from vidpost.cli import main

    out = tmp_path / "rl"
    args = [
        "rl",
        *grpo_overrides(
            out, tiny_wan_dir, "algorithm=nft", "rollout.sde=ode", "rollout.shared_noise=false", "checkpoint.every=1"
        ),
    ]
    assert main([*args, "train.max_steps=1"]) == 0
    first = tree_hash(out / "final")
    run_killed("mid_rename", out / "final", [*args, "train.max_steps=2", "--resume", "latest"])
    assert_previous_or_none(out / "final", first)
    assert main([*args, "train.max_steps=2", "--resume", "latest"]) == 0
    assert tree_hash(out / "final") != first and not (out / "final.old").exists()
    load(tiny_wan_dir, lora=out / "final")


def test_a_dmd2_student_killed_half_written_is_absent_and_generate_refuses(tmp_path, tiny_wan_dir, capsys):
    from vidpost.cli import main

    out = tmp_path / "dmd2"
    args = ["distill", "--method", "dmd2", f"output_dir={out}", f"model.teacher={tiny_wan_dir}"]
    args += ["data.prompts=[a red circle, a blue square]", "data.sample_prompts=[a red circle]", "data.num_frames=5"]
    args += ["data.height=32", "data.width=32", "generator.steps=2", "fake_score.updates=1", "train.batch_size=2"]
    args += ["train.max_steps=1", "checkpoint.every=0", "log.sample_count=1", "log.tensorboard=false"]
    run_killed("files", out / "final", args, k=2)
    assert not (out / "final").exists()
    assert main(["generate", "--model", str(out / "final"), "--prompt", "a red circle", "--out", str(tmp_path)]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)


def test_qat_killed_before_publishing_resumes_to_a_complete_quantised_folder(tmp_path, tiny_wan_dir):
    from vidpost.cli import main

    out = tmp_path / "qat"
    args = ["qat", f"recipe={W4A4}", f"output_dir={out}", f"model.teacher={tiny_wan_dir}"]
    args += ["data.prompts=[a red circle, a blue square]", "data.num_frames=5", "data.height=32", "data.width=32"]
    args += ["data.steps=2", "train.batch_size=2", "train.max_steps=2", "checkpoint.every=1", "log.tensorboard=false"]
    run_killed("before_rename", out / "final", args)
    assert not (out / "final").exists() and (out / "final.tmp").is_dir()
    assert main([*args, "--resume", "latest"]) == 0
    assert not (out / "final.tmp").exists()
    assert load(out / "final").quant_report.recipe == "w4a4-int4"


def test_quantize_killed_before_its_recipe_is_written_leaves_nothing_generate_could_mistake(
    tmp_path, tiny_wan_dir, capsys
):
    from vidpost.cli import main

    out = tmp_path / "q"
    args = ["quantize", "--model", str(tiny_wan_dir), "--recipe", INT8, "--out", str(out)]
    run_killed("files", out, args, k=3)  # the model's files, not yet quant.json / quant.safetensors
    assert not out.exists()
    assert main(["generate", "--model", str(out), "--prompt", "a dot", "--out", str(tmp_path / "v")]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)
    assert main(args) == 0
    assert load(out).quant_report.backend_used


def test_merge_lora_killed_mid_rename_and_rerun(tmp_path, tiny_wan_dir, tiny_manifest):
    from vidpost.cli import main

    train = tmp_path / "sft"
    assert main(sft_args(train, tiny_wan_dir, tiny_manifest, "train.max_steps=1")) == 0
    out = tmp_path / "merged"
    merge = ["merge-lora", "--base", str(tiny_wan_dir), "--lora", str(train / "final"), "--out", str(out)]
    assert main(merge) == 0
    first = tree_hash(out)
    run_killed("mid_rename", out, [*merge, "--scale", "0.5"])
    assert_previous_or_none(out, first)
    assert main([*merge, "--scale", "0.5"]) == 0
    assert tree_hash(out) != first
    load(out)


def test_an_eval_killed_while_writing_its_summary_leaves_complete_files(tmp_path):
    from vidpost.cli import main
    from vidpost.media.video_io import write_video

    videos = tmp_path / "videos"
    for i in range(3):
        write_video(videos / f"p{i}.mp4", torch.rand(3, 5, 16, 16), fps=8)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": "a red circle"}) + "\n" for i in range(3)))
    out = tmp_path / "eval"
    args = ["eval", "--prompts", str(prompts), "--videos", str(videos), "--rewards", "temporal", "--out", str(out)]
    run_killed("file", out / "summary.json", args)
    assert not (out / "summary.json").exists()
    for f in out.glob("*.json"):
        json.loads(f.read_text())  # every file that is there is complete
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["n_videos"] == 3


# ---- the table: each row's first line ---------------------------------------------------------------------------


def test_row01_the_readme_quantize_example_writes_a_folder_generate_loads(tmp_path, capsys):
    from vidpost.cli import main

    for recipe in ("w8a8-int8", "w8a8-int8-all"):
        out = tmp_path / recipe
        args = ["--model", "shapes", "--recipe", str(ROOT / "configs" / "quant" / f"{recipe}.yaml"), "--out", str(out)]
        assert main(["quantize", *args]) == 0, capsys.readouterr().err
        adapter = load(out)
        assert set(adapter.quant_report.backend_used.values()) == {"torchao:int8_dynamic"}
        video = tmp_path / f"{recipe}.mp4"
        args = ["generate", "--model", str(out), "--prompt", "a red circle moves to the right", "--out", str(video)]
        assert main(args) == 0
        assert video.is_file()


def test_row02_a_folder_that_says_it_is_quantised_but_lacks_its_scales_is_one_error(tmp_path, tiny_wan_dir, capsys):
    from vidpost.cli import main
    from vidpost.pipelines.quantize import quantize_model

    quantize_model(str(tiny_wan_dir), INT8, tmp_path / "q")
    (tmp_path / "q" / "quant.safetensors").unlink()
    assert main(["generate", "--model", str(tmp_path / "q"), "--prompt", "x", "--out", str(tmp_path / "v")]) == 2
    assert "says it is quantised" in one_error_line(capsys.readouterr().err)


def test_row04_resume_latest_skips_a_truncated_checkpoint_and_names_the_one_it_takes(
    tmp_path, tiny_wan_dir, tiny_manifest, capsys
):
    from vidpost.cli import main

    out = tmp_path / "sft"
    args = sft_args(out, tiny_wan_dir, tiny_manifest, "train.max_steps=2")
    assert main(args) == 0
    newest = out / "checkpoints" / "step_0000002"
    data = (newest / "trainable.safetensors").read_bytes()
    (newest / "trainable.safetensors").write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert main([*args, "--resume", str(newest)]) == 2  # a named folder that does not load: one line
    assert "trainable.safetensors does not load" in one_error_line(capsys.readouterr().err)
    assert main([*args, "--resume", "latest"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint step_0000002 does not load" in err and "moved aside to step_0000002.bad" in err
    assert f"resumed from {out / 'checkpoints' / 'step_0000001'} at step 1" in err
    assert (out / "checkpoints" / "step_0000002.bad").is_dir() and (out / "checkpoints" / "step_0000002").is_dir()


def test_row05_a_full_models_weights_given_as_a_lora_are_refused(tmp_path, tiny_wan_dir, capsys):
    from vidpost.cli import main

    fake = tmp_path / "lora"
    fake.mkdir()
    weights = next((tiny_wan_dir / "transformer").glob("*.safetensors"))
    (fake / "pytorch_lora_weights.safetensors").write_bytes(weights.read_bytes())
    args = ["generate", "--model", str(tiny_wan_dir), "--lora", str(fake), "--prompt", "x", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "no LoRA weights in that file" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "content",
    [b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.", b"just some text\n", b'{"a": 1}'],
    ids=["pickle", "text", "json"],
)
def test_row06_a_lora_that_is_not_safetensors_is_one_line(tmp_path, tiny_wan_dir, capsys, content):
    from vidpost.cli import main

    f = tmp_path / "weights.safetensors"
    f.write_bytes(content)
    args = ["generate", "--model", str(tiny_wan_dir), "--lora", str(f), "--prompt", "x", "--out", str(tmp_path)]
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(f) in line and "not a safetensors file" in line


PAYLOAD = "!!python/object/apply:os.system ['touch {marker}']"


@pytest.mark.parametrize("where", ["config", "recipe", "pipeline", "attention", "reward", "override"])
@pytest.mark.parametrize("kind", ["syntax", "tag"])
def test_row06_bad_yaml_anywhere_is_one_line_naming_it_and_runs_nothing(tmp_path, tiny_wan_dir, capsys, where, kind):
    from vidpost.cli import main

    marker = tmp_path / "ran"
    text = f"a: {PAYLOAD.format(marker=marker)}\n" if kind == "tag" else "a: [1, 2\nb: }\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = str(tmp_path / "out")
    commands = {
        "config": ["sft", "--config", str(bad)],
        "recipe": ["quantize", "--model", str(tiny_wan_dir), "--recipe", str(bad), "--out", out],
        "pipeline": ["run", str(bad), "--dry-run"],
        "attention": ["generate", "--model", str(tiny_wan_dir), "--prompt", "x", "--attention-config", str(bad)],
        "reward": ["eval", "--prompts", "shapes-heldout", "--videos", out, "--reward-config", str(bad), "--out", out],
        "override": ["sft", f"optim.lr={PAYLOAD.format(marker=marker)}" if kind == "tag" else "optim.lr=[1, 2"],
    }
    assert main(commands[where]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert ("override" in line) if where == "override" else (str(bad) in line), line
    assert not marker.exists()


def test_row07_a_second_run_on_a_busy_output_folder_refuses_and_a_stale_lock_is_taken_over(
    tmp_path, tiny_wan_dir, tiny_manifest, capsys
):
    import socket

    from vidpost.cli import main

    out = tmp_path / "sft"
    out.mkdir()
    lock = out / ".vidpost.lock"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lock.write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname(), "started": "earlier"}))
        args = sft_args(out, tiny_wan_dir, tiny_manifest, "train.max_steps=1")
        assert main(args) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{out} is in use by another" in line and f"process {alive.pid}" in line
        assert not (out / "config.json").exists() and lock.exists()
    finally:
        alive.kill()
        alive.wait()
    assert main(args) == 0  # the process is gone: its lock is stale
    assert "taking over the stale lock" in capsys.readouterr().err
    assert not lock.exists() and (out / "final").is_dir()


def test_row08_a_full_disk_while_checkpointing_is_one_line_and_the_previous_checkpoint_is_intact(
    tmp_path, tiny_wan_dir, tiny_manifest, capsys, monkeypatch
):
    from vidpost.cli import main
    from vidpost.training import checkpoint

    real, calls = checkpoint.save_file, []

    def fills_the_disk(tensors, filename, *a, **k):
        calls.append(filename)
        if "step_0000002" in filename:
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", fills_the_disk)
    out = tmp_path / "sft"
    assert main(sft_args(out, tiny_wan_dir, tiny_manifest, "train.max_steps=3")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no space left on" in line and "while writing checkpoint step_0000002 (need ~" in line
    assert "the previous checkpoint step_0000001 is intact" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000001"]


@pytest.mark.parametrize("steps", ["-1", "0"])
def test_row09_a_step_budget_below_one_is_refused_before_loading(tmp_path, capsys, monkeypatch, steps):
    from vidpost.cli import main
    from vidpost.pipelines import sft

    monkeypatch.setattr(sft, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["sft", "--config", "configs/shapes/sft-lora.yaml", f"train.max_steps={steps}"]) == 2
    assert f"config key 'train.max_steps': {steps} is out of range (must be ≥ 1)" in one_error_line(
        capsys.readouterr().err
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_row10_non_finite_numbers_are_refused_when_parsed(tmp_path, capsys, value):
    from vidpost.cli import main

    assert main(["generate", "--prompt", "x", f"--guidance={value}", "--out", str(tmp_path)]) == 2
    assert f"argument --guidance: '{value}' is not a finite number" in one_error_line(capsys.readouterr().err)
    assert main(["rl", "--config", "configs/shapes/rl-nft.yaml", f"rollout.guidance_scale={value}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "config key 'rollout.guidance_scale'" in line and "is not a finite number" in line


def test_row11_a_frame_count_past_the_position_encoding_names_the_largest_valid_one(tmp_path, capsys):
    from vidpost.cli import main

    assert main(["generate", "--prompt", "x", "--num-frames", "129", "--out", str(tmp_path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    rope = load("shapes").transformer.config.rope_max_seq_len
    assert f"num_frames=129 needs 65 positions but the model's position encoding covers {rope}" in line
    assert f"largest valid num_frames: {2 * rope - 1}" in line


def test_row12_a_size_that_cannot_fit_in_memory_is_refused_before_sampling(tmp_path, capsys, monkeypatch):
    from vidpost.cli import main
    from vidpost.models import base

    monkeypatch.setattr(base, "available_memory", lambda device: 2 * 10**9)
    args = ["generate", "--prompt", "x", "--num-frames", "127", "--height", "1024", "--width", "1024"]
    assert main([*args, "--out", str(tmp_path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "1 video(s) of 127×1024×1024 need at least" in line and "2.0 GB is available on cpu" in line
    # the estimate is a lower bound: the decoded frames alone
    adapter = load("shapes")
    assert adapter.memory_estimate(1, 127, 1024, 1024) > 127 * 3 * 1024 * 1024 * 4


def test_row13_magcache_is_offered_only_where_its_ratios_can_be_given(tmp_path, capsys):
    from vidpost.cli import main
    from vidpost.models.inference import InferenceConfig

    assert main(["generate", "--prompt", "x", "--cache", "mag", "--out", str(tmp_path)]) == 2
    assert "invalid choice: 'mag'" in capsys.readouterr().err
    readme = (ROOT / "README.md").read_text()
    assert "--cache mag" not in readme and "taylorseer, mag" not in readme
    with pytest.raises(ValueError, match="needs the model's magnitude ratios"):
        InferenceConfig.from_dict({"cache": {"method": "mag"}})
    InferenceConfig.from_dict({"cache": {"method": "mag", "options": {"mag_ratios": [1.0] * 4}}})


def test_row14_a_pickle_as_a_training_state_is_refused_without_suggesting_unsafe_loading(
    tmp_path, tiny_wan_dir, tiny_manifest, capsys
):
    from vidpost.cli import main

    out = tmp_path / "sft"
    args = sft_args(out, tiny_wan_dir, tiny_manifest, "train.max_steps=1")
    assert main(args) == 0
    ckpt = out / "checkpoints" / "step_0000001"
    assert not list(ckpt.glob("*.pt")), "checkpoints hold no pickle"
    for f in ckpt.glob("training_state.*"):
        f.unlink()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, ckpt / "training_state.pt")
    assert main([*args, "--resume", str(ckpt)]) == 2
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert "is not a vidpost training state" in line and "weights_only" not in err and not marker.exists()


def test_row15_generate_py_under_a_python_without_vidpost_says_how_to_run_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-S", str(ROOT / "generate.py"), "--prompt", "x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "does not have vidpost installed" in line and ".venv/bin/python generate.py" in line


def test_row16_a_t_interval_never_leaves_the_rewards_range():
    from vidpost.evaluation.stats import stats

    values = [1.0, 1.0, 0.3, 1.0]  # the temporal score of four clips, one flickering
    assert stats(values)["ci95"][1] > 1  # the plain t-interval
    s = stats(values, (-1.0, 1.0))
    assert s["ci95"][1] == 1.0 and s["ci95_clipped"] and s["ci95"][0] == stats(values)["ci95"][0]


def test_row17_help_pages_come_from_the_code(capsys):
    import typing

    from vidpost.cli import main
    from vidpost.pipelines.distill import METHODS
    from vidpost.pipelines.rl import RLConfig

    def help_of(*args: str) -> str:
        assert main([*args, "--help"]) == 0
        return " ".join(capsys.readouterr().out.split())

    algorithms = typing.get_args(typing.get_type_hints(RLConfig)["algorithm"])
    assert all(a in help_of("rl") for a in algorithms)
    for method in METHODS:
        text = help_of("distill", "--method", method)
        assert "--method {" + ",".join(METHODS) + "}" in text
        assert f"configs/<model>/{'distill' if method == 'lit' else method}.yaml" in text
    adapter = load("shapes")
    text = help_of("generate")
    st = adapter.vae_scale_temporal
    assert f"{st}k+1 for the Shapes models" in text and "4k+1 for Wan" in text
    assert f"{st}k+1 for the Shapes models" in " ".join((ROOT / "README.md").read_text().split())


def test_nothing_is_unpickled_unsafely_and_reward_models_load_safetensors_only():
    folders = ("pipelines", "models", "training", "rewards", "evaluation", "rl", "enhance", "media", "shapes")
    for p in (p for d in folders for p in (ROOT / d).glob("*.py")):
        assert "weights_only=False" not in p.read_text(), p
    assert "CLIPModel.from_pretrained(p, use_safetensors=True)" in (ROOT / "rewards" / "clip_score.py").read_text()
    videoalign = (ROOT / "rewards" / "videoalign.py").read_text()
    assert (
        "Qwen2VLForConditionalGeneration.from_pretrained(self.path, dtype=self.dtype, use_safetensors=True)"
        in videoalign
    )


@pytest.mark.slow
def test_row08_on_a_real_small_filesystem(tmp_path, tiny_wan_dir, tiny_manifest, capsys):
    """The same on a 2 MB tmpfs (needs the right to mount one: root on Linux)."""
    from vidpost.cli import main

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mount / "sft"
        args = sft_args(
            out, tiny_wan_dir, tiny_manifest, "train.max_steps=40", "lora.enabled=false", "checkpoint.keep_last=0"
        )
        assert main(args) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "no space left on" in line and "is intact" in line
        assert not list((out / "checkpoints").glob("*.tmp"))
    finally:
        subprocess.run(["umount", str(mount)])
