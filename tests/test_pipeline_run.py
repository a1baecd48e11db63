"""`vidpost run`: the stage graph on the Shapes world at toy budgets — every stage runs, a second run skips all,
a changed stage config reruns that stage and the later ones only, an interrupted stage resumes, `--from` reruns;
every pipeline config in configs/ validates and dry-runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vidpost.config import load_config
from vidpost.pipelines import run as pipeline
from vidpost.training.runner import TrainResult

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "configs" / "shapes"
PIPELINE = str(SHAPES / "pipeline.yaml")
CONFIGS = sorted((ROOT / "configs").glob("*/pipeline.yaml"))

TINY = [
    "data.shapes_clips=8",
    "sft.overrides=[train.max_steps=2,train.batch_size=2,validation.every=0,checkpoint.every=0]",
    "rl.overrides=[train.max_steps=1,guard.every=0,rollout.group_size=2,rollout.prompts_per_step=1,"
    "rollout.steps=2,train.micro_batch=2,checkpoint.every=0]",
    "enhance.sft_overrides=[train.max_steps=2,data.shapes_n=8,checkpoint.every=0]",
    "distill.overrides=[train.max_steps=1,fake_score.updates=1,train.batch_size=2,checkpoint.every=0,"
    "log.sample_count=1]",
    "eval.limit=2",
    "eval.steps=2",
    "eval.grid_videos=2",
    "eval.batch_size=2",
]


def tiny_cfg(run_dir: Path, *extra: str) -> pipeline.PipelineConfig:
    return load_config(pipeline.PipelineConfig, PIPELINE, [f"run_dir={run_dir}", *TINY, *extra])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import os

    os.environ.setdefault("VIDPOST_CACHE", str(tmp_path_factory.mktemp("cache")))
    run_dir = tmp_path_factory.mktemp("pipeline")
    result = pipeline.run(tiny_cfg(run_dir), SHAPES)
    return run_dir, result


def test_every_pipeline_config_validates_and_dry_runs(capsys):
    assert {p.parent.name for p in CONFIGS} >= {"shapes", "wan2.1-t2v-1.3b", "hunyuanvideo"}
    for path in CONFIGS:
        cfg = load_config(pipeline.PipelineConfig, path)
        assert pipeline.validate(cfg, path.parent) == [], path
        plan = pipeline.run(cfg, path.parent, dry=True)["plan"]
        assert [p[0] for p in plan] == list(pipeline.STAGES)
        assert pipeline.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sft" in out and "optimize" in out


def test_bad_configs_are_refused_with_the_key(tmp_path, capsys):
    assert pipeline.main([PIPELINE, "--dry-run", "sft.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert pipeline.main([PIPELINE, "--dry-run", "sft.overrides=[train.nope=3]"]) == 2
    assert "nope" in capsys.readouterr().err
    assert pipeline.main([PIPELINE, "--dry-run", "eval.rewards={nosuch: 1}"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert pipeline.main([str(tmp_path / "missing.yaml")]) == 2


def test_all_stages_run_and_report(tiny_run):
    run_dir, result = tiny_run
    assert [a for _, _, a in result["plan"]] == ["run"] * len(pipeline.STAGES)
    assert [r["stage"] for r in result["rows"]] == ["base", "sft", "rl", "enhance", "distill", "optimize"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    states = {s["stage"]: s["state"] for s in manifest["stages"]}
    assert states["data"]["manifest"].endswith("manifest.jsonl")
    assert states["sft"]["model"].endswith("sft/merged")  # the LoRA was merged for the next stage
    assert Path(states["rl"]["lora"], "pytorch_lora_weights.safetensors").exists()
    assert Path(states["enhance"]["enhancer"], "rewriter.yaml").exists()
    assert states["optimize"]["inference"]["cache"]["method"] == "first_block"
    # the distill stage's student is the RL model (its LoRA fused in), sampled on its own defaults
    student = Path(states["distill"]["model"])
    assert student.name == "final" and states["distill"]["lora"] is None
    meta = json.loads((student / "vidpost.json").read_text())
    assert meta["distilled"]["teacher_lora"] == states["rl"]["lora"] and meta["default_guidance_scale"] == 1.0
    assert meta["generation"]["num_frames"] == 17  # the teacher's generation defaults carried over
    # what flows on: the later stages keep the earlier outputs
    assert states["optimize"]["model"] == states["distill"]["model"]
    assert states["optimize"]["enhancer"] == states["enhance"]["enhancer"]
    for row in result["rows"]:
        for key in ("caption", "user"):
            m = row["eval"][key]
            assert 0 <= m["graded"] <= 1 and 0 <= m["success"] <= 1 and m["seconds_per_video"] > 0
            assert "reward.verifier" in m and "guard" in m
    assert len(result["rows"][3]["eval"]["rewrites"]) == 2
    md = (run_dir / "report.md").read_text()
    assert md.count("\n| ") >= 6 and "success (user prompts)" in md
    html = (run_dir / "report.html").read_text()
    assert "grid.gif" in html and (run_dir / "grid.gif").stat().st_size > 1000
    # the merged SFT model keeps the Shapes generation defaults
    assert json.loads(Path(states["sft"]["model"], "vidpost.json").read_text())["generation"]["num_frames"] == 17


def test_second_run_skips_then_changes_rerun_only_downstream(tiny_run, monkeypatch):
    run_dir, first = tiny_run
    calls = []

    def spy(name, fn):
        def wrapped(*a, **k):
            calls.append(name)
            return fn(*a, **k)

        monkeypatch.setitem(pipeline.RUNNERS, name, wrapped)

    for name, fn in list(pipeline.RUNNERS.items()):
        spy(name, fn)
    again = pipeline.run(tiny_cfg(run_dir), SHAPES)
    assert calls == [] and all(a == "skip (done)" for _, _, a in again["plan"])
    assert again["rows"][2]["eval"] == first["rows"][2]["eval"]  # evaluations reused too

    # a changed RL setting: rl, enhance, distill and optimize rerun; base, data, sft are reused
    changed = tiny_cfg(
        run_dir,
        "rl.overrides=[train.max_steps=1,guard.every=0,rollout.group_size=2,"
        "rollout.prompts_per_step=1,rollout.steps=2,train.micro_batch=2,checkpoint.every=0,optim.lr=1e-5]",
    )
    plan = pipeline.run(changed, SHAPES, dry=True)["plan"]
    assert [a for _, _, a in plan] == ["skip (done)"] * 3 + ["run"] * 4

    # --from reruns that stage and the later ones; an interrupted stage (no record) resumes
    (run_dir / "optimize" / "stage.json").unlink()
    (run_dir / "optimize" / "stage.partial.json").write_text(json.dumps({"hash": res_hash(run_dir, "optimize")}))
    seen = {}

    def record_resume(cfg, state, out, base, resume):
        seen["resume"] = resume
        return state

    monkeypatch.setitem(pipeline.RUNNERS, "optimize", record_resume)
    res = pipeline.run(tiny_cfg(run_dir), SHAPES, stop="optimize")
    assert seen["resume"] is True
    assert [a for _, _, a in res["plan"]] == ["skip (done)"] * 6 + ["run"]
    calls.clear()
    plan = pipeline.run(tiny_cfg(run_dir), SHAPES, start="enhance", dry=True)["plan"]
    assert [a for _, _, a in plan] == ["skip (done)"] * 4 + ["run"] * 3


def res_hash(run_dir: Path, stage: str) -> str:
    plan = pipeline.run(tiny_cfg(run_dir), SHAPES, dry=True)["plan"]
    return next(h for name, h, _ in plan if name == stage)


def test_interrupted_stage_with_another_config_starts_over(tmp_path, monkeypatch):
    out = tmp_path / "optimize"
    out.mkdir(parents=True)
    (out / "stage.partial.json").write_text(json.dumps({"hash": "something-else"}))
    (out / "leftover").write_text("x")
    seen = {}

    def record(cfg, state, out_dir, base, resume):
        seen["resume"] = resume
        seen["leftover"] = (out_dir / "leftover").exists()
        return state

    for name in pipeline.RUNNERS:
        monkeypatch.setitem(pipeline.RUNNERS, name, lambda c, s, o, b, r: s)
    monkeypatch.setitem(pipeline.RUNNERS, "optimize", record)
    monkeypatch.setattr(pipeline, "evaluate", lambda *a, **k: {"n": 0})
    monkeypatch.setattr(pipeline, "write_report", lambda *a, **k: tmp_path / "report.md")
    pipeline.run(tiny_cfg(tmp_path), SHAPES)
    assert seen == {"resume": False, "leftover": False}
    assert not (out / "stage.partial.json").exists() and (out / "stage.json").exists()


def test_from_needs_finished_earlier_stages(tmp_path):
    with pytest.raises(ValueError, match="no finished record"):
        pipeline.run(tiny_cfg(tmp_path / "fresh"), SHAPES, start="rl")


def test_multi_process_stages_use_accelerate_launch(tmp_path, monkeypatch):
    cmds = []
    monkeypatch.setattr(pipeline.subprocess, "call", lambda cmd: cmds.append(cmd) or 0)
    cfg = tiny_cfg(tmp_path, "launch.processes=2", "launch.accelerate_config=configs/accelerate/fsdp.yaml")
    out = tmp_path / "sft"
    out.mkdir(parents=True)
    TrainResult(kind="full", final=out / "final", steps=2).write(out)  # the stage record the launched run writes
    state = pipeline.run_sft(cfg, pipeline.State(model="shapes-base"), out, SHAPES, resume=True)
    (cmd,) = cmds
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--num_processes" in cmd
    assert cmd[cmd.index("--config_file") + 1] == "configs/accelerate/fsdp.yaml"
    assert cmd[cmd.index("-m", 3) + 1] == "vidpost.pipelines.sft" and cmd[-2:] == ["--resume", "latest"]
    assert f"output_dir={out}" in cmd and "model.path=shapes-base" in cmd
    assert state.model == str(out / "final")  # full fine-tuning output (per the stage record) passed on as the model


def test_sft_and_rl_stages_under_accelerate_launch_two_cpu_processes(tmp_path, monkeypatch):
    """`launch.processes: 2` runs the sft and rl stages with `accelerate launch` (2 CPU processes, gloo: on a machine
    without GPUs `--multi_gpu` starts them through torchrun as MULTI_CPU; `--cpu` would start one process only).
    accelerate's FSDP plugin needs an accelerator, so FSDP itself (configs/accelerate/fsdp.yaml) runs only on GPUs;
    the process-group path is the same."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = tiny_cfg(
        tmp_path,
        "launch.processes=2",
        "launch.extra_args=[--multi_gpu,--num_machines,'1',--mixed_precision,'no',--dynamo_backend,'no']",
        "eval.limit=1",
        "rl.overrides=[train.max_steps=1,guard.every=0,rollout.group_size=2,rollout.prompts_per_step=1,"
        "rollout.steps=2,train.micro_batch=2,checkpoint.every=0]",
    )
    result = pipeline.run(cfg, SHAPES, stop="rl")
    assert [a for _, _, a in result["plan"]] == ["run"] * 4
    sft_hist = json.loads((tmp_path / "sft" / "history.json").read_text())
    assert len(sft_hist) == 2 and all(math.isfinite(h["loss"]) for h in sft_hist)
    assert (tmp_path / "sft" / "merged" / "model_index.json").exists()
    assert Path(result["state"]["lora"], "pytorch_lora_weights.safetensors").exists()
    assert len(json.loads((tmp_path / "rl" / "history.json").read_text())) == 1


def test_missing_model_fails_before_anything_is_written(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = pipeline.main([str(ROOT / "configs/wan2.1-t2v-1.3b/pipeline.yaml"), f"run_dir={run_dir}"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert not run_dir.exists()


def test_rl_stage_runs_the_algorithm_its_yaml_names(tmp_path, tiny_wan_dir, grpo_overrides):
    over = [o for o in grpo_overrides(tmp_path / "unused", tiny_wan_dir) if not o.startswith(("output_dir", "model."))]
    over += ["rollout.sde=ode", "rollout.shared_noise=false"]
    cfg = tiny_cfg(tmp_path / "run", "rl.config=configs/shapes/rl-nft.yaml", f"rl.overrides={json.dumps(over)}")
    state = pipeline.State(model=str(tiny_wan_dir))
    new = pipeline.run_rl(cfg, state, tmp_path / "rl", ROOT, resume=False)
    assert new.model == str(tiny_wan_dir) and Path(new.lora, "pytorch_lora_weights.safetensors").exists()
    assert json.loads((tmp_path / "rl" / "config.json").read_text())["algorithm"] == "nft"
    assert "loss" in json.loads((tmp_path / "rl" / "history.json").read_text())[0]


def test_a_pipeline_file_with_the_old_grpo_stage_gets_a_one_line_hint(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("grpo:\n  config: configs/shapes/grpo.yaml\n")
    assert pipeline.main([str(old)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the grpo stage is now `rl:`" in err[0]
