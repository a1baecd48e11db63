"""The README's commands run as written: every command of the Set-up, Generating, Stage 1, Stage 2, Quantize and
Compare sections is read from README.md (the README is the source of truth: a command that changes there changes here) and
run in a scratch folder that links the repo's configs/ and assets/.

Two tables say what "as written" means on a CPU machine without downloads, and nothing else is changed:
- `SUBSTITUTE`: the README's placeholders for real weights become a miniature of the same class, and full sizes
  become tiny ones;
- `TINY`: a command that trains from a config gets dotted overrides appended (a step or two at a tiny size), the
  same command line a user would type to try it.
A command that cannot run here names why in `NOT_HERE` (and where its code path is tested). A README command in
none of these tables runs; one of these entries that the README no longer has fails the test, so the tables cannot
go stale."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "setup": "## Set-up: two commands",
    "generating": "## Generating videos",
    "sft": "## Stage 1 — SFT",
    "rl": "## Stage 2 — RL: GRPO and the forward-process methods",
    "quantize": "### Low-precision linear layers: `vidpost quantize`, `vidpost qat`",
    "compare": "### Side by side on the Shapes world: `vidpost compare`",
}

SUBSTITUTE = {
    "/path/to/Wan2.1-T2V-1.3B-Diffusers": "{tiny_wan}",
    "/models/Wan2.1-T2V-1.3B-Diffusers": "{tiny_wan}",
    "--num-frames 81 --height 480 --width 832 --steps 50": "--num-frames 9 --height 32 --width 32 --steps 2",
}

RL_TINY = [
    "rollout.pool_size=8",
    "rollout.prompts_per_step=1",
    "rollout.group_size=2",
    "rollout.num_frames=5",
    "rollout.height=32",
    "rollout.width=32",
    "rollout.steps=2",
    "train.max_steps=1",
    "train.micro_batch=2",
    "guard.every=0",
    "checkpoint.every=0",
    "log.tensorboard=false",
]
TINY = {
    "configs/wan2.1-t2v-1.3b/sft.yaml": [
        "model.path={tiny_wan}",
        "model.dtype=float32",
        "model.gradient_checkpointing=false",
        "data.manifest={manifest}",
        "data.buckets=[[9, 32, 32]]",
        "lora.rank=4",
        "optim.warmup_steps=0",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.mixed_precision=no",
        "checkpoint.every=1",
        "validation.every=0",
        "validation.prompts=[]",
        "log.tensorboard=false",
    ],
    "configs/shapes/rl-nft.yaml": RL_TINY,
    "configs/shapes/rl-draft.yaml": [*RL_TINY, "draft.steps=1"],
    "configs/shapes/grpo.yaml": [*RL_TINY, "rollout.sde_window=[0, 2]"],
    "configs/shapes/qat-w4a4.yaml": [
        "data.pool_size=8",
        "data.steps=2",
        "data.num_frames=5",
        "data.height=32",
        "data.width=32",
        "train.max_steps=1",
        "train.batch_size=2",
        "checkpoint.every=0",
        "log.tensorboard=false",
    ],
}
TINY_FLAGS = {
    "vidpost quantize eval": ["--limit", "2", "--seeds", "1"],
    "vidpost compare": ["--limit", "1", "--seeds", "1"],
}
"""flags appended to a command that evaluates on the held-out set (2 prompts instead of 64)"""

NOT_HERE = {
    "make test": "this test suite is `make test`; CI runs it",
    "accelerate launch --config_file configs/accelerate/ddp.yaml -m vidpost.pipelines.sft --config "
    "configs/wan2.1-t2v-1.3b/sft.yaml": "multi-GPU launch (tests/test_sft.py runs 2 data-parallel CPU processes)",
    "accelerate launch --config_file configs/accelerate/fsdp.yaml -m vidpost.pipelines.sft --config "
    "configs/wan2.1-t2v-14b/sft.yaml lora.enabled=false": "FSDP over GPUs (tests/test_sequence_parallel.py shards "
    "over 2 CPU processes)",
    "accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml -m vidpost.pipelines.sft --config ...": (
        "DeepSpeed needs GPUs; `...` stands for a config"
    ),
    "make rl-shapes": "the measured table: hours on 2 cores (tests/test_rl.py runs rl-compare at a tiny size)",
    "vidpost rl --config configs/wan2.1-t2v-1.3b/grpo.yaml": "VideoAlign and HPS weights cannot be downloaded here "
    "(tests/test_rewards_videoalign.py and test_rewards_clip.py run them on miniatures)",
    "vidpost rl --config configs/wan2.1-t2v-1.3b/rl-nft.yaml": "VideoAlign and HPS weights cannot be downloaded here",
    "accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 8 -m vidpost.pipelines.rl "
    "--config configs/wan2.1-t2v-1.3b/grpo.yaml rollout.prompts_per_step=1": "8 GPUs and real reward weights",
    "make quant-shapes": "every recipe and three QAT runs on 128 held-out clips: hours (the quantize, qat and "
    "quant-eval lines above are its commands)",
}

EXPECT = {
    'python generate.py --prompt "a red circle moves to the right" --out outputs/red.mp4': ["outputs/red.mp4"],
    "python generate.py --prompts-file prompts.txt --out outputs/batch/": ["outputs/batch/contact_sheet.png"],
    "vidpost generate": ["cat.mp4"],
    "vidpost merge-lora": ["merged/model_index.json"],
    "vidpost quantize": ["runs/quant/shapes-int8/quant.json"],
    "vidpost qat": ["runs/qat-rot/final/quant.json"],
    "vidpost quantize eval": ["runs/quant-eval/table.md"],
    "vidpost compare": ["outputs/compare/table.md"],
    "vidpost sft precompute": ["runs/wan1.3b-sft/cache/summary.json"],
}


def readme_commands(heading: str) -> list[str]:
    """The commands of the ```bash blocks under `heading` (up to the next heading of the same or a higher level):
    continuation lines joined, comments dropped, whitespace collapsed."""
    text = (ROOT / "README.md").read_text()
    start = text.index(heading + "\n")
    level = heading.split()[0]
    rest = text[start + len(heading) :]
    outside = re.sub(r"```.*?```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), rest, flags=re.S)
    end = re.search(rf"^#{{1,{len(level)}}} ", outside, re.M)  # the next heading outside the code blocks
    body = rest[: end.start()] if end else rest
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = _strip_comment(line)
            if command:
                commands.append(command)
    return commands


def _strip_comment(line: str) -> str:
    """The line up to its comment (a `#` outside quotes), whitespace collapsed, quotes as written."""
    out, quote = [], None
    for ch in line:
        if quote is None and ch == "#":
            break
        if ch in "\"'" and quote in (None, ch):
            quote = None if quote else ch
        out.append(ch)
    return " ".join("".join(out).split())


def all_commands() -> dict[str, list[str]]:
    return {name: readme_commands(heading) for name, heading in SECTIONS.items()}


def test_the_tables_name_only_commands_the_readme_has():
    commands = [c for cs in all_commands().values() for c in cs]
    for c in NOT_HERE:
        assert c in commands, f"NOT_HERE names a command the README no longer shows: {c}"
    for c in EXPECT:
        assert any(x.startswith(c) for x in commands), f"EXPECT names a command the README no longer shows: {c}"
    text = " ".join(commands)
    for config in TINY:
        assert config in text, f"TINY names a config no README command uses: {config}"
    for placeholder in SUBSTITUTE:
        assert placeholder in text, f"SUBSTITUTE names text the README no longer has: {placeholder}"


@pytest.fixture
def work(tmp_path, monkeypatch, tiny_wan_dir, tiny_manifest):
    """A scratch folder with the repo's configs/, assets/ and generate.py, and the files the commands read."""
    for name in ("configs", "assets", "generate.py"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "prompts.txt").write_text("a red circle moves to the right\na blue square moves up\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    return {"dir": tmp_path, "tiny_wan": str(tiny_wan_dir), "manifest": str(tiny_manifest)}


def as_run_here(command: str, work: dict) -> list[str]:
    """The argv that runs `command` here (the SUBSTITUTE and TINY tables applied)."""
    for text, here in SUBSTITUTE.items():
        command = command.replace(text, here.format(**work))
    argv = shlex.split(command)
    for config, extra in TINY.items():
        if config in argv:
            argv += [e.format(**work) for e in extra]
    for prefix, extra in TINY_FLAGS.items():
        if command.startswith(prefix):
            argv += extra
    return argv


def run(command: str, work: dict) -> None:
    from vidpost.cli import main

    argv = as_run_here(command, work)
    if argv[0] == "vidpost":
        code = main(argv[1:])
    elif argv[0] == "python":
        code = subprocess.run([sys.executable, *argv[1:]], cwd=work["dir"], timeout=600).returncode
    elif argv[:2] == ["make", "demo"]:
        if not (Path(sys.prefix) / "bin" / ".installed").exists():
            pytest.skip("make demo runs in the Makefile's virtual environment (.venv), not in this Python")
        code = subprocess.run(["make", "demo", f"VENV={sys.prefix}"], cwd=ROOT, timeout=600).returncode
    else:
        raise AssertionError(f"no way to run {command!r}: add it to NOT_HERE with the reason")
    assert code == 0, f"README command failed (exit {code}): {command}\n  ran as: {shlex.join(argv)}"
    for prefix, files in EXPECT.items():
        if command.startswith(prefix):
            for f in files:
                assert (work["dir"] / f).exists(), f"{command} did not write {f}"


@pytest.mark.parametrize("section", list(SECTIONS))
def test_readme_section_runs_as_written(section, work):
    commands = all_commands()[section]
    assert commands, f"no commands found under {SECTIONS[section]!r}"
    for command in commands:
        if command not in NOT_HERE:
            run(command, work)
