"""Low-precision models compose with the rest of the framework: a LoRA is fused before quantisation (quantise after
merge), the quantised folder runs under the inference settings (FP8 block-sparse attention, Enhance-A-Video, step
caching), a few-step student keeps its sampling defaults when quantised, and the staged run's optimize stage takes
a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vidpost.models import load
from vidpost.models.quant import QuantLinear, install_quant, quant_modules, read_recipe

ROOT = Path(__file__).resolve().parents[1]
FP8 = ROOT / "configs" / "quant" / "w8a8-fp8.yaml"


def _lora(tmp_path: Path, model: Path) -> Path:
    from vidpost.sections import LoraConfig
    from vidpost.training.lora import add_lora, lora_state_dict

    a = load(model)
    add_lora(a, LoraConfig(rank=4))
    with torch.no_grad():
        for n, p in a.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    a.save_lora(tmp_path / "lora", lora_state_dict(a.transformer))
    return tmp_path / "lora"


def test_a_lora_is_fused_then_quantised_and_the_folder_runs_under_fp8_attention_and_caches(tmp_path, tiny_wan_dir):
    from vidpost.models.inference import apply_inference
    from vidpost.models.sampling import sample
    from vidpost.pipelines.quantize import quantize_model

    lora = _lora(tmp_path, tiny_wan_dir)
    quantize_model(f"{tiny_wan_dir}+{lora}", FP8, tmp_path / "q")
    got = load(tmp_path / "q")
    assert quant_modules(got.transformer) and not [n for n, _ in got.transformer.named_parameters() if "lora" in n]
    by_hand = load(tiny_wan_dir, lora=lora)
    by_hand.transformer.fuse_lora()
    by_hand.transformer.unload_lora()
    install_quant(by_hand, read_recipe(FP8))
    x, cond = torch.randn(got.latent_shape(1, 5, 32, 32)), got.encode_prompt(["a red circle moves right"])
    with torch.no_grad():
        torch.testing.assert_close(got.predict_velocity(x, 0.5, cond), by_hand.predict_velocity(x, 0.5, cond))
        base = load(tiny_wan_dir)
        install_quant(base, read_recipe(FP8))
        assert (got.predict_velocity(x, 0.5, cond) - base.predict_velocity(x, 0.5, cond)).abs().max() > 1e-3

    kw = {
        "num_frames": 5,
        "height": 32,
        "width": 32,
        "num_inference_steps": 4,
        "guidance_scale": 3.0,
        "shift": 3.0,
        "seed": 0,
    }
    plain = sample(got, ["a red circle moves right"], **kw, return_latents=True)
    handle = apply_inference(
        got,
        {
            "attention": {"implementation": "fp8_sparse", "eav": {"weight": 2.0}},
            "cache": {"method": "first_block", "threshold": 0.5},
        },
        num_inference_steps=4,
    )
    try:
        fast = sample(got, ["a red circle moves right"], **kw, return_latents=True)
    finally:
        handle.remove()
    assert torch.isfinite(fast).all() and not torch.equal(fast, plain)
    assert all(isinstance(m, QuantLinear) for m in quant_modules(got.transformer).values())


def test_a_quantised_few_step_student_keeps_its_sampling_defaults(tmp_path, tiny_wan_dir):
    from vidpost.models.base import read_vidpost_config
    from vidpost.pipelines.quantize import quantize_model

    student = load(tiny_wan_dir)
    student.default_guidance_scale = 1.0
    student.generation = {"steps": 4, "num_frames": 5, "height": 32, "width": 32}
    student.save_pretrained(tmp_path / "student")
    quantize_model(str(tmp_path / "student"), FP8, tmp_path / "q")
    meta = read_vidpost_config(tmp_path / "q")
    assert meta["default_guidance_scale"] == 1.0 and meta["generation"]["steps"] == 4
    again = load(tmp_path / "q")
    assert again.default_guidance_scale == 1.0 and again.quant_report.recipe == "w8a8-fp8"


def test_the_optimize_stage_quantises_the_current_model_with_its_lora(tmp_path, tiny_wan_dir):
    from vidpost.config import load_config
    from vidpost.pipelines import run as pipeline

    lora = _lora(tmp_path, tiny_wan_dir)
    cfg = load_config(
        pipeline.PipelineConfig,
        ROOT / "configs" / "shapes" / "pipeline.yaml",
        [f"run_dir={tmp_path / 'run'}", f"optimize.quant={FP8}"],
    )
    assert pipeline.validate(cfg, ROOT) == []
    state = pipeline.State(model=str(tiny_wan_dir), lora=str(lora))
    new = pipeline.run_optimize(cfg, state, tmp_path / "optimize", ROOT, resume=False)
    assert new.lora is None and Path(new.model) == tmp_path / "optimize" / "model"
    assert json.loads(Path(new.model, "quant.json").read_text())["source"] == f"{tiny_wan_dir}+{lora}"
    assert new.inference == dict(cfg.optimize.inference)
    bad = load_config(
        pipeline.PipelineConfig, ROOT / "configs" / "shapes" / "pipeline.yaml", ["optimize.quant=x.yaml"]
    )
    assert any(p.startswith("optimize.quant (x.yaml)") for p in pipeline.validate(bad, ROOT))
    # another recipe (or an edit of its file) reruns the stage
    other = load_config(
        pipeline.PipelineConfig,
        ROOT / "configs" / "shapes" / "pipeline.yaml",
        [f"optimize.quant={tmp_path / 'r.yaml'}"],
    )
    (tmp_path / "r.yaml").write_text(FP8.read_text())
    h1 = pipeline.stage_hash("optimize", other, "up", ROOT)
    (tmp_path / "r.yaml").write_text(FP8.read_text().replace("name: w8a8-fp8", "name: edited"))
    assert h1 != pipeline.stage_hash("optimize", other, "up", ROOT)


def test_the_step_benchmark_runs_and_says_what_needs_a_gpu(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quant_step import main

    table = main(
        ["--device", "cpu", "--layers", "1", "--frames", "1", "--height", "8", "--width", "8", "--repeats", "1"]
    )
    assert "| bf16 | " in table and "| W8A8 INT8 (torchao) | " in table
    assert table.count("needs a GPU") == 2
