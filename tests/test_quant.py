"""Low-precision linear layers (`vidpost.models.quant`, `vidpost quantize`): each layer computes its recipe's
reference formula, torchao's int8 kernels agree with the reference, calibration sets static per-step scales and
SmoothQuant factors, the packed weight bytes, and a quantised folder reloads to the same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidpost.config import from_dict
from vidpost.kernels.quant_formats import fake_quant, fake_quant_mx
from vidpost.models import load
from vidpost.models.quant import (
    QuantLinear,
    QuantRecipe,
    TensorQuant,
    bits_per_weight,
    install_quant,
    rotation,
    selected_linears,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "quant").glob("*.yaml"))


def recipe(**kw) -> QuantRecipe:
    return from_dict(QuantRecipe, kw)


def _linear(i: int = 64, o: int = 48, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(i, o)


def test_quant_linear_is_its_reference_formula():
    lin, x = _linear(), torch.randn(2, 7, 64) * 3
    q = QuantLinear(
        lin, recipe(weight={"format": "e4m3", "scale": "channel"}, activation={"format": "e4m3", "scale": "token"})
    )
    want = fake_quant(x, "e4m3", "token") @ fake_quant(lin.weight.detach(), "e4m3", "channel").T + lin.bias
    torch.testing.assert_close(q(x), want, rtol=0, atol=1e-5)
    mx = QuantLinear(
        lin, recipe(weight={"format": "int8", "scale": "mx"}, activation={"format": "int8", "scale": "mx"})
    )
    want = fake_quant_mx(x, "int8") @ fake_quant_mx(lin.weight.detach(), "int8").T + lin.bias
    torch.testing.assert_close(mx(x), want, rtol=0, atol=1e-5)


def test_rotation_and_smoothing_leave_the_exact_product_unchanged():
    lin, x = _linear(96, 32), torch.randn(5, 96)
    h = rotation(96)  # blocks of 32 (the largest power of two dividing 96)
    torch.testing.assert_close(h @ h.T, torch.eye(96), atol=1e-6, rtol=0)
    q = QuantLinear(lin, recipe(weight={"format": "e5m2", "scale": "channel"}, rotate="hadamard"))
    q.smooth = torch.rand(96) + 0.5
    q.refresh_weight()
    # the product of the prepared input with the prepared (unquantised) weight is the original x·Wᵀ
    w_prep = (q.weight_fp * q.smooth[None, :]) @ q.rot
    torch.testing.assert_close(q.prepare_input(x) @ w_prep.T, x @ lin.weight.detach().T, atol=1e-4, rtol=1e-4)
    # and the layer quantises exactly those prepared tensors
    want = q.prepare_input(x) @ fake_quant(w_prep, "e5m2", "channel").T + lin.bias
    torch.testing.assert_close(q(x), want, rtol=0, atol=1e-5)


def test_randomized_rotation_is_exact_fixed_and_spreads_the_mean_the_plain_hadamard_gathers():
    r = rotation(512, "randomized")
    torch.testing.assert_close(r @ r.T, torch.eye(512), atol=1e-5, rtol=0)
    assert torch.equal(r, rotation(512, "randomized"))  # the same signs on every load
    assert not torch.equal(r.abs(), r) and not torch.equal(r, rotation(512))
    # inputs like the FFN's after GELU: a positive mean of ~0.3 × their RMS
    x = torch.nn.functional.gelu(torch.randn(64, 512, generator=torch.Generator().manual_seed(0)))

    def int4_error(rot: torch.Tensor) -> float:
        back = fake_quant(x @ rot, "int4", "token") @ rot.T
        return float((back - x).norm() / x.norm())

    none, plain, randomized = int4_error(torch.eye(512)), int4_error(rotation(512)), int4_error(r)
    # the Hadamard's all-ones row puts √256 × the mean into one channel per block: the new outlier
    peaks = (x @ rotation(512)).abs().amax(0)
    assert float(peaks[0]) > 3 * float(peaks.median()) and float(peaks[256]) > 3 * float(peaks.median())
    assert plain > 1.2 * none and randomized < 0.8 * none


def test_a_left_out_scale_defaults_per_role():
    r = recipe(weight={"format": "int8"}, activation={"format": "e4m3"})
    assert (r.weight.scale, r.activation.scale) == ("channel", "token")
    assert recipe(weight={"format": "int4", "scale": "group", "block": 128}).weight.scale == "group"


def test_static_scales_follow_the_step_group():
    lin = _linear()
    q = QuantLinear(
        lin, recipe(weight={"format": "int8"}, activation={"format": "int8", "scale": "tensor"}, per_step=2)
    )

    class State:
        step = None

    q.state = State()
    q.act_scale = torch.tensor([0.01, 1.0])
    x = torch.full((1, 64), 2.0)
    q.state.step = 0  # group 0: scale 0.01 → 2.0 saturates at 127·0.01
    torch.testing.assert_close(q(x), torch.full((1, 64), 1.27) @ q.weight_q.T + lin.bias, atol=1e-5, rtol=0)
    q.state.step = 3  # group 1: scale 1 → 2.0 is exact
    torch.testing.assert_close(q(x), x @ q.weight_q.T + lin.bias, atol=1e-5, rtol=0)
    q.state.step = 9  # beyond the calibrated steps: the last group
    torch.testing.assert_close(q(x), x @ q.weight_q.T + lin.bias, atol=1e-5, rtol=0)


def test_bits_per_weight_and_packed_bytes():
    assert bits_per_weight(TensorQuant("int8", "channel"), 128) == 8 + 32 / 128
    assert bits_per_weight(TensorQuant("e2m1", "mx", 32), 128) == 4.25
    assert bits_per_weight(TensorQuant("e2m1", "nvfp4"), 128) == 4.5
    assert bits_per_weight(TensorQuant("int4", "group", 128), 4096) == 4.25


def test_every_recipe_in_configs_validates_and_bad_ones_name_the_problem():
    from vidpost.models.quant import read_recipe

    assert len(RECIPES) >= 10
    for path in RECIPES:
        r = read_recipe(path)
        assert r.name == path.stem
    with pytest.raises(ValueError, match="weight.format"):
        recipe(weight={"format": "fp6"})
    with pytest.raises(ValueError, match="activation.scale"):
        recipe(activation={"format": "int8", "scale": "channelwise"})
    with pytest.raises(ValueError, match="nvfp4 scales go with format e2m1"):
        recipe(weight={"format": "int4", "scale": "nvfp4"})


def test_torchao_int8_kernels_agree_with_the_reference_on_the_miniature(tiny_wan_dir):
    pytest.importorskip("torchao")
    ref_model, ao_model = load(tiny_wan_dir), load(tiny_wan_dir)
    base = {
        "weight": {"format": "int8_full", "scale": "channel"},
        "activation": {"format": "int8_full", "scale": "token"},
    }
    r_ref = install_quant(ref_model, recipe(**base))
    r_ao = install_quant(ao_model, recipe(**base, backend="torchao"))
    assert set(r_ref.backend_used.values()) == {"reference"}
    assert set(r_ao.backend_used.values()) == {"torchao:int8_dynamic"} and r_ao.layers == r_ref.layers
    # layer by layer, on the same input, the kernels compute the reference (codes equal; fp32 rescaling order aside).
    # (Through the whole network the two drift apart by a code here and there: an input that differs in its last bit
    # flips a rounding at a .5 boundary, so the comparison is per layer.)
    g = torch.Generator().manual_seed(1)
    plain = load(tiny_wan_dir).transformer
    for name in r_ref.layers:
        ref_layer, ao_layer = ref_model.transformer.get_submodule(name), ao_model.transformer.get_submodule(name)
        inp = torch.randn(3, 11, ref_layer.in_features, generator=g) * 2
        with torch.no_grad():
            got = ao_layer(inp)
            torch.testing.assert_close(got, ref_layer(inp), atol=1e-5, rtol=1e-5)
            assert (got - plain.get_submodule(name)(inp)).abs().max() > 1e-4  # it did quantise


def test_quantize_calibrates_and_the_saved_folder_reloads_to_the_same_outputs(tmp_path, tiny_wan_dir):
    from diffusers import WanTransformer3DModel

    from vidpost.pipelines.quantize import main, quantize_model

    cfg = tmp_path / "r.yaml"
    cfg.write_text(
        "name: static-smooth\nweight: {format: e4m3, scale: channel}\nactivation: {format: e4m3, scale: tensor}\n"
        "per_step: 2\nsmoothquant_alpha: 0.5\ncalibration: {prompts: ['a red circle', 'a blue square'], count: 2, steps: 4, num_frames: 5, "
        "height: 32, width: 32}\n"
    )
    adapter, report = quantize_model(str(tiny_wan_dir), cfg)
    mods = {n: m for n, m in adapter.transformer.named_modules() if isinstance(m, QuantLinear)}
    assert (
        set(mods) == set(report.layers) == set(selected_linears(load(tiny_wan_dir).transformer, adapter_recipe(cfg)))
    )
    m = next(iter(mods.values()))
    assert m.act_scale.numel() == 2 and (m.act_scale > 0).all()  # 4 steps in groups of 2
    assert not torch.equal(m.smooth, torch.ones_like(m.smooth))
    assert 0.5 < report.ratio < 1.0
    out = tmp_path / "q"
    assert main(["--model", str(tiny_wan_dir), "--recipe", str(cfg), "--out", str(out)]) == 0
    meta = json.loads((out / "quant.json").read_text())
    assert meta["recipe"]["name"] == "static-smooth" and meta["report"]["layers"] == report.layers
    reloaded = load(out)
    x = torch.randn(adapter.latent_shape(1, 5, 32, 32))
    cond = adapter.encode_prompt(["a red circle"])
    state = adapter.attention_state
    with torch.no_grad():
        for step in (0, 3):
            state.set_step(step, 4, 0.5)
            reloaded.attention_state.set_step(step, 4, 0.5)
            torch.testing.assert_close(reloaded.predict_velocity(x, 0.5, cond), adapter.predict_velocity(x, 0.5, cond))
    WanTransformer3DModel.from_pretrained(out, subfolder="transformer")  # the original weights, stock diffusers
    assert main(["--model", str(tiny_wan_dir), "--recipe", str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2


def adapter_recipe(path: Path) -> QuantRecipe:
    from vidpost.models.quant import read_recipe

    return read_recipe(path)


def test_layer_sensitivity_measures_each_layer_alone_and_names_its_type(tiny_wan_dir):
    from vidpost.evaluation.settings import resolve_settings
    from vidpost.models.quant import layer_sensitivity, layer_type

    adapter = load(tiny_wan_dir)
    settings = resolve_settings(tiny_wan_dir, adapter, num_frames=5, height=32, width=32, steps=4)
    w4 = recipe(weight={"format": "int4", "scale": "channel"}, activation={"format": "int4", "scale": "token"})
    w8 = recipe(weight={"format": "e4m3", "scale": "channel"}, activation={"format": "e4m3", "scale": "token"})
    e4 = layer_sensitivity(adapter, w4, ["a red circle", "a blue square"], settings, every=2)
    e8 = layer_sensitivity(adapter, w8, ["a red circle", "a blue square"], settings, every=2)
    assert list(e4) == selected_linears(adapter.transformer, w4) and all(v > 0 for v in e4.values())
    assert sum(e4.values()) > 2 * sum(e8.values())  # 4 bits hurt more than 8 (e4m3 measured 3.3× less error)
    assert not [m for m in adapter.transformer.modules() if isinstance(m, QuantLinear)]  # every layer restored
    kinds = {layer_type(n) for n in e4}
    assert {"self-attn q/k/v", "self-attn out", "cross-attn k/v", "FFN up", "FFN down"} <= kinds
    assert layer_type("condition_embedder.time_proj") == "time embedding" and layer_type("x.y") == "other"


def test_keep_worst_keeps_the_most_sensitive_layers_and_the_folder_remembers_them(tmp_path, tiny_wan_dir):
    from vidpost.evaluation.settings import resolve_settings
    from vidpost.models.quant import layer_sensitivity, read_recipe
    from vidpost.pipelines.quantize import main

    cal = "calibration: {prompts: ['a red circle', 'a blue square'], count: 2, steps: 4, num_frames: 5, height: 32, width: 32}"
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"name: w4-mixed\nweight: {{format: int4}}\nactivation: {{format: int4}}\nkeep_worst: 3\n{cal}\n")
    plain = load(tiny_wan_dir)
    settings = resolve_settings(tiny_wan_dir, plain, steps=4, num_frames=5, height=32, width=32)
    errors = layer_sensitivity(plain, read_recipe(cfg), ["a red circle", "a blue square"], settings)
    worst = sorted(errors, key=errors.get, reverse=True)[:3]
    assert errors[worst[-1]] > min(errors.values())  # a real ranking, not ties
    out = tmp_path / "q"
    assert main(["--model", str(tiny_wan_dir), "--recipe", str(cfg), "--out", str(out)]) == 0
    meta = json.loads((out / "quant.json").read_text())
    assert sorted(meta["recipe"]["keep"]) == sorted(worst)
    assert not set(worst) & set(meta["report"]["layers"]) and len(meta["report"]["layers"]) == len(errors) - 3
    reloaded = load(out)
    for name in worst:
        assert type(reloaded.transformer.get_submodule(name)) is torch.nn.Linear
    assert reloaded.quant_report.layers == meta["report"]["layers"]
