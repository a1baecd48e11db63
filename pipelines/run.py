"""`vidpost run`: the four post-training stages as one resumable pipeline with one report.

    vidpost run configs/shapes/pipeline.yaml [--from STAGE] [--to STAGE] [--dry-run] [dotted.overrides=...]

Stages, in order (each one optional, `enabled: false` passes its input through):

    base      the starting model, evaluated as the first row of the report (nothing is trained)
    data      Shapes clips exported as mp4 + manifest (`data.shapes_clips`), or a user manifest passed through
    sft       `vidpost sft` (LoRA or full) on the data; a LoRA is merged so the next stage starts from full weights
    rl        `vidpost rl` (LoRA; any algorithm: grpo, nft, awm, rsft, draft) from the SFT model; its guard's `best/`
              weights are kept when there are any
    enhance   a prompt rewriter: `vidpost enhance train sft` (+ optional `grpo` against the current video model), or
              an existing/zero-shot enhancer (`enhance.enhancer`)
    distill   `vidpost distill --method dmd2` (optional; `distill.config`): a few-step, CFG-free student of the
              current model (its RL LoRA fused in); the later stages and the report use the student
    optimize  inference settings (attention implementation, Enhance-A-Video, step caching, torch.compile) applied
              to the final model at generation time, and optionally a low-precision recipe (`optimize.quant`: the
              model quantised and calibrated as `vidpost quantize` does); nothing is trained

What flows from stage to stage is a small state: {model folder, LoRA folder, enhancer folder, inference settings}.
Each stage writes `<run_dir>/<stage>/stage.json` with that state, the seconds it took, and a hash of everything
that determines its output: the stage's settings in the pipeline file, the content of the stage YAML it names,
its overrides, and the upstream stage's hash. A stage whose record exists with the same hash is skipped (its state
reused); a stage folder without a record is an interrupted run: it resumes from its latest checkpoint when it was
started with the same hash (`stage.partial.json`), else starts over. `--from S`
reruns S and every later stage; `--to S` stops after S. `<run_dir>/manifest.json` lists what produced what.

After each stage the held-out prompts are generated with the stage's state (same initial noise per prompt for
every stage) and scored: the reward(s) of `eval.rewards`, the guard metric `eval.guard` (rewards that trained
nothing), the Shapes verifier's success and graded score where the prompts carry scene specs, and seconds per
video. Shapes prompts are scored twice: from the canonical captions (model quality) and from the user-style
prompts, rewritten by the stage's enhancer when there is one (what a user gets). Rewards always judge the video
against the canonical caption when there is one, else against the user's prompt — never against a rewrite.
`<run_dir>/report.md` and `report.html` hold one row per stage and a video grid (stages side by side).

Multi-GPU: with `launch.processes` > 1 the sft and rl stages run under `accelerate launch` (with
`launch.accelerate_config`, e.g. configs/accelerate/fsdp.yaml); everything else runs in this process.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vidpost.config import ArgumentParser, field_docs, load_config
from vidpost.evaluation.stages import describe, evaluate, write_report
from vidpost.outputs import OutputLock, write_json
from vidpost.pipelines.run_config import (  # noqa: F401 (validate, stage_hash: the staged run's checks)
    PipelineConfig,
    State,
    config_text,
    eval_hash,
    read_record,
    resolve_path,
    stage_hash,
    validate,
)
from vidpost.training.runner import ExitCode, TrainResult

STAGES = ("base", "data", "sft", "rl", "enhance", "distill", "optimize")


# ---- stages ------------------------------------------------------------------------------------------------------


def _launch_stage(module: str, config: Path, overrides: list[str], cfg: PipelineConfig, resume: bool) -> None:
    """Run `vidpost sft|rl` under `accelerate launch` (multi-process)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.launch.processes)]
    if cfg.launch.accelerate_config:
        cmd += ["--config_file", cfg.launch.accelerate_config]
    cmd += [*cfg.launch.extra_args, "-m", module, "--config", str(config), *overrides]
    if resume:
        cmd += ["--resume", "latest"]
    print("launch: " + " ".join(cmd), file=sys.stderr)
    rc = subprocess.call(cmd)
    if rc not in (ExitCode.OK, ExitCode.GUARD_STOP):  # the RL guard's stop keeps the best weights
        raise RuntimeError(f"{module} exited with code {rc}")


def run_sft(cfg: PipelineConfig, state: State, out: Path, base: Path, resume: bool) -> State:
    from vidpost.pipelines import sft

    overrides = [*cfg.sft.overrides, f"output_dir={out}", f"model.path={state.model}"]
    config = resolve_path(cfg.sft.config, base)
    if state.manifest:
        # The latent cache depends on the model's VAE / text encoder, the clips and the data settings, not on the
        # rest of the SFT config: keyed by those, it lives beside the data and survives reruns of this stage.
        key = {"model": state.model, "manifest": state.manifest, "config": config_text(str(config), base)}
        key["data"] = [o for o in cfg.sft.overrides if o.startswith("data.")]
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        cache = Path(state.manifest).parent / f"latents-{digest}"
        overrides += [f"data.manifest={state.manifest}", f"data.cache_dir={cache}"]
    if cfg.launch.processes > 1:
        _launch_stage("vidpost.pipelines.sft", config, overrides, cfg, resume)
        result = TrainResult.read(out)
    else:
        result = sft.train(load_config(sft.SFTConfig, config, overrides), resume="latest" if resume else None)
    if result.kind == "full":
        return State(model=str(result.final), manifest=state.manifest)
    from vidpost.pipelines.merge_lora import merge_lora

    merged = out / "merged"
    if merged.exists():
        shutil.rmtree(merged)
    merge_lora(state.model, result.final, merged)
    return State(model=str(merged), manifest=state.manifest)


def _rl_weights(result: TrainResult | None, out: Path) -> tuple[Path, bool]:
    """(the weights the rl stage hands on: its guard's best or its final ones; whether they are a LoRA), from its
    TrainResult, else (a launched multi-process run) its stage record, else the files in `out`."""
    if result is None and (out / TrainResult.RECORD).exists():
        result = TrainResult.read(out)
    if isinstance(result, TrainResult):
        return result.best or result.final, result.kind == "lora"
    best = out / "best"
    weights = best if best.exists() else out / "final"
    return weights, (weights / "pytorch_lora_weights.safetensors").exists()


def run_rl(cfg: PipelineConfig, state: State, out: Path, base: Path, resume: bool) -> State:
    from vidpost.pipelines import rl

    if state.lora:
        raise ValueError("the rl stage needs full weights as input (the sft stage merges its LoRA)")
    overrides = [*cfg.rl.overrides, f"output_dir={out}", f"model.path={state.model}"]
    config = resolve_path(cfg.rl.config, base)
    result = None
    if cfg.launch.processes > 1:
        _launch_stage("vidpost.pipelines.rl", config, overrides, cfg, resume)
    else:
        rcfg = load_config(rl.RLConfig, config, overrides)
        result = rl.train(rcfg, resume="latest" if resume else None)
        if result.stopped:
            print(f"rl ({rcfg.algorithm}): {result.stopped}", file=sys.stderr)
    weights, is_lora = _rl_weights(result, out)
    if not is_lora:
        return State(model=str(weights), manifest=state.manifest)  # full fine-tuning
    return State(model=state.model, lora=str(weights), manifest=state.manifest)


def run_enhance(cfg: PipelineConfig, state: State, out: Path, base: Path, resume: bool) -> State:
    from vidpost.pipelines import enhance_grpo, enhance_sft

    e = cfg.enhance
    new = State(**{**state.to_dict()})
    if e.enhancer:
        new.enhancer = e.enhancer
        return new
    if not e.sft:
        raise ValueError("the enhance stage needs `enhancer` (an existing one) or `sft` (a training YAML)")
    sft_out = out / "sft"
    scfg = load_config(
        enhance_sft.EnhanceSFTConfig, resolve_path(e.sft, base), [*e.sft_overrides, f"output_dir={sft_out}"]
    )
    final = enhance_sft.train_sft(scfg, resume="latest" if resume else None).final
    if e.grpo:
        overrides = [*e.grpo_overrides, f"output_dir={out / 'grpo'}", f"model.path={final}"]
        overrides += [f"video.path={state.model}", f"video.lora={state.lora or ''}"]
        gcfg = load_config(enhance_grpo.EnhanceGRPOConfig, resolve_path(e.grpo, base), overrides)
        final = enhance_grpo.train_grpo(gcfg, resume="latest" if resume else None).final
    new.enhancer = str(final)
    return new


def run_distill(cfg: PipelineConfig, state: State, out: Path, base: Path, resume: bool) -> State:
    from vidpost.pipelines import distill_dmd2

    overrides = [*cfg.distill.overrides, f"output_dir={out}", f"model.teacher={state.model}"]
    overrides.append(f"model.lora={state.lora or ''}")
    dcfg = load_config(distill_dmd2.DMD2Config, resolve_path(cfg.distill.config, base), overrides)
    result = distill_dmd2.train(dcfg, resume="latest" if resume else None)
    return State(**{**state.to_dict(), "model": str(result.final), "lora": None})


def run_data(cfg: PipelineConfig, state: State, out: Path, base: Path, resume: bool) -> State:
    if cfg.data.shapes_clips > 0:
        from vidpost.pipelines.shapes_models import export_data

        return State(**{**state.to_dict(), "manifest": str(export_data(out, cfg.data.shapes_clips))})
    if not cfg.data.manifest:
        raise ValueError("the data stage needs shapes_clips > 0 or a manifest")
    manifest = resolve_path(cfg.data.manifest, base)
    if not manifest.is_file():
        raise ValueError(f"data manifest {manifest} does not exist")
    return State(**{**state.to_dict(), "manifest": str(manifest)})


def run_optimize(cfg: PipelineConfig, state: State, out: Path, base: Path, resume: bool) -> State:
    from vidpost.models.inference import InferenceConfig

    InferenceConfig.from_dict(cfg.optimize.inference)  # validate now, not at generation time
    model, lora = state.model, state.lora
    if cfg.optimize.quant:
        from vidpost.pipelines.quantize import quantize_model

        spec = f"{model}+{lora}" if lora else model
        quantize_model(spec, resolve_path(cfg.optimize.quant, base), out / "model")
        model, lora = str(out / "model"), None
    return State(**{**state.to_dict(), "model": model, "lora": lora, "inference": dict(cfg.optimize.inference)})


RUNNERS = {
    "data": run_data,
    "sft": run_sft,
    "rl": run_rl,
    "enhance": run_enhance,
    "distill": run_distill,
    "optimize": run_optimize,
}


# ---- the runner ----------------------------------------------------------------------------------------------------


def run(cfg: PipelineConfig, base: Path, *, start: str | None = None, stop: str | None = None, dry: bool = False):
    run_dir = Path(cfg.run_dir)
    problems = validate(cfg, base)
    if problems:
        raise ValueError("invalid pipeline config:\n  " + "\n  ".join(problems))
    for s in (start, stop):
        if s is not None and s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; stages: {', '.join(STAGES)}")
    if dry:
        return _run_stages(cfg, base, start, stop, dry)
    from vidpost.models import resolve_model_path

    resolve_model_path(cfg.model)  # a missing model is an error before anything is written
    with OutputLock(run_dir, what="staged run"):  # one staged run per run_dir (each stage locks its own folder too)
        return _run_stages(cfg, base, start, stop, dry)


def _run_stages(cfg: PipelineConfig, base: Path, start: str | None, stop: str | None, dry: bool) -> dict[str, Any]:
    """The stages from `start` to `stop` (see `run`)."""
    run_dir = Path(cfg.run_dir)
    first = STAGES.index(start) if start else 0
    last = STAGES.index(stop) if stop else len(STAGES) - 1
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    state = State(model=cfg.model)
    upstream = ""
    plan, rows, manifest = [], [], {"name": cfg.name, "stages": []}
    for i, name in enumerate(STAGES[: last + 1]):
        h = stage_hash(name, cfg, upstream, base)
        upstream = h
        enabled = name == "base" or getattr(cfg, name).enabled
        out = run_dir / name
        rec = read_record(out / "stage.json")
        done = rec is not None and rec.get("hash") == h
        if i < first and not done and enabled:
            raise ValueError(f"--from {start}: stage {name} has no finished record with the current config; run it")
        if not enabled:
            action = "disabled"
        elif done and not (start and i >= first):
            action = "skip (done)"
        else:
            action = "run"
        plan.append((name, h, action))
        if dry:
            continue
        if not enabled:
            continue
        t0 = time.time()
        if action == "run":
            # a folder without a record is an interrupted run: resume it if it was started with this very config
            started = read_record(out / "stage.partial.json")
            resume = rec is None and started is not None and started.get("hash") == h
            if out.exists() and not resume:
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "stage.partial.json", {"stage": name, "hash": h}, indent=1)
            print(f"== stage {name} ({'resuming' if resume else 'running'})", file=sys.stderr)
            if name != "base":
                state = RUNNERS[name](cfg, state, out, base, resume)
            rec = {"stage": name, "hash": h, "state": state.to_dict(), "seconds": round(time.time() - t0, 1)}
            write_json(out / "stage.json", rec, indent=1)
            (out / "stage.partial.json").unlink()
        else:
            print(f"== stage {name}: unchanged, skipped", file=sys.stderr)
            state = State(**rec["state"])
        manifest["stages"].append({"stage": name, "hash": h, "state": rec["state"], "seconds": rec["seconds"]})
        if name == "data":  # the model is unchanged: no report row
            continue
        eh = eval_hash(h, cfg)
        ev = read_record(out / "eval" / "eval.json")
        if ev is None or ev.get("hash") != eh or action == "run":
            print(f"== evaluating {name}", file=sys.stderr)
            (out / "eval").mkdir(parents=True, exist_ok=True)
            ev = {"hash": eh, "row": evaluate(state, cfg.eval, out / "eval", device)}
            write_json(out / "eval" / "eval.json", ev, indent=1)
        rows.append(
            {"stage": name, "what": describe(name, rec["state"]), "seconds": rec["seconds"], "eval": ev["row"]}
        )
    if dry:
        return {"plan": plan}
    write_json(run_dir / "manifest.json", manifest, indent=1)
    report = write_report(run_dir, cfg, rows)
    return {"plan": plan, "rows": rows, "report": str(report), "state": state.to_dict()}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost run", description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", type=Path, help="pipeline YAML (configs/<world>/pipeline.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run_dir=/tmp/run rl.enabled=false")
    p.add_argument("--from", dest="start", choices=STAGES, help="rerun this stage and every later one")
    p.add_argument("--to", dest="stop", choices=STAGES, help="stop after this stage")
    p.add_argument("--dry-run", action="store_true", help="validate every stage config and print the plan")
    p.add_argument("--help-config", action="store_true", help="list the pipeline settings")
    args = p.parse_intermixed_args(argv)
    if args.help_config:
        for k, v in field_docs(PipelineConfig).items():
            print(f"{k:32s} {v}")
        return 0
    if args.config is None:
        p.error("a pipeline config is required")
    try:
        if not args.config.is_file():
            raise ValueError(f"pipeline config {args.config} does not exist")
        try:
            cfg = load_config(PipelineConfig, args.config, args.overrides)
        except ValueError as e:
            if str(e).startswith("unknown config key 'grpo'"):
                raise ValueError(
                    f"{e} (the grpo stage is now `rl:`; its YAML's `algorithm` picks grpo, nft, ...)"
                ) from e
            raise
        result = run(cfg, args.config.parent, start=args.start, stop=args.stop, dry=args.dry_run)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, h, action in result["plan"]:
        print(f"{name:9s} {h}  {action}")
    if "report" in result:
        print(Path(result["report"]).read_text())
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
