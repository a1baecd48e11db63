"""The low-precision formats' references on hand-worked values: rounding ties to even, saturation, subnormals, the
OCP MX E8M0 scale rule, NVFP4's two-level scale, symmetric integer clipping; and agreement with PyTorch's own float8
casts wherever those exist."""

from __future__ import annotations

import pytest
import torch

from vidpost.kernels.quant_formats import (
    fake_quant,
    fake_quant_groups,
    fake_quant_mx,
    fake_quant_nvfp4,
    hadamard,
    mx_scale,
    quantize_elements,
)


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def test_e4m3_ties_saturation_and_subnormals():
    # 432 is halfway between 416 (mantissa 101) and 448 (110): ties to the even mantissa → 448; beyond 448 saturates
    assert quantize_elements(t(432.0, 424.0, 440.0, 500.0, -1e9), "e4m3").tolist() == [448, 416, 448, 448, -448]
    # 1.0625 is halfway between 1 and 1.125 → 1 (even); 1.1875 between 1.125 and 1.25 → 1.25
    assert quantize_elements(t(1.0625, 1.1875, 0.0, -0.0), "e4m3").tolist() == [1.0, 1.25, 0.0, 0.0]
    sub = 2.0**-9  # the smallest subnormal; subnormal spacing is 2^-9 below 2^-6
    got = quantize_elements(t(sub / 2, 3 * sub / 2, 5 * sub / 2, 2.0**-7 + sub / 4), "e4m3").tolist()
    assert got == [0.0, 2 * sub, 2 * sub, 2.0**-7]


def test_e5m2_and_e2m1_hand_worked():
    assert quantize_elements(t(57344.0, 60000.0, 1.125, 1.375, 2.0**-17, 3 * 2.0**-17), "e5m2").tolist() == [
        57344.0, 57344.0, 1.0, 1.5, 0.0, 2.0**-15,
    ]  # fmt: skip
    # e2m1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 — ties to the even code
    x = t(0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -5.0, -0.3)
    assert quantize_elements(x, "e2m1").tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -4.0, -0.5]


@pytest.mark.parametrize("fmt, dtype", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
def test_float8_reference_equals_pytorch_casts_inside_the_range(fmt, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=g) * 10 ** torch.empty(20000).uniform_(-5, 2.5, generator=g)])
    top = 448.0 if fmt == "e4m3" else 57344.0
    x = x.clamp(-top, top)
    torch.testing.assert_close(quantize_elements(x, fmt), x.to(dtype).float(), rtol=0, atol=0)


def test_int_symmetric_clipping_and_ties():
    assert quantize_elements(t(2.5, 3.5, -2.5, 127.5, -128.0, -300.0), "int8").tolist() == [2, 4, -2, 127, -127, -127]
    assert quantize_elements(t(7.6, -8.0, 0.5, 1.5), "int4").tolist() == [7, -7, 0, 2]


def test_absmax_scales_per_tensor_channel_token():
    w = t(1.0, -2.0, 0.5, 4.0).reshape(2, 2)
    # per channel: rows scaled by 2/127 and 4/127; the row maximum is exact, 1.0 → round(63.5) = 64 → 64·2/127
    got = fake_quant(w, "int8", "channel")
    assert got[0, 1] == -2.0 and got[1, 1] == 4.0
    assert got[0, 0].item() == pytest.approx(64 * 2 / 127) and got[1, 0].item() == pytest.approx(16 * 4 / 127)
    # per tensor e4m3: s = 4/448; 0.5/s = 56 is exact in e4m3
    assert fake_quant(w, "e4m3", "tensor")[1, 0].item() == pytest.approx(0.5)
    # a static scale: values beyond it saturate
    assert fake_quant(t(10.0), "int8", scale=t(1 / 127)).item() == pytest.approx(1.0)
    assert fake_quant(torch.zeros(3), "int8").abs().sum() == 0


def test_mx_scale_rule_and_blocks():
    # amax 10: ⌊log2 10⌋ = 3; e4m3's emax is 8 → scale 2^-5; e2m1 (emax 2) → 2^1; int8 (emax 0) → 2^3
    assert mx_scale(t(10.0), "e4m3").item() == 2.0**-5
    assert mx_scale(t(10.0), "e2m1").item() == 2.0
    assert mx_scale(t(10.0), "int8").item() == 8.0
    assert mx_scale(t(0.0), "e4m3").item() == 1.0
    assert mx_scale(t(2.0**200), "e5m2").item() == 2.0**127  # E8M0's largest
    assert float(mx_scale(t(10.0), "e4m3").to(torch.float8_e8m0fnu).float()) == 2.0**-5
    # MXFP4 on one block: scale 2 → 10/2 = 5 → e2m1 4 (tie to even) → 8; 3 → 1.5 → 3; 1 → 0.5 → 1
    x = torch.zeros(32)
    x[:3] = t(10.0, 3.0, 1.0)
    assert fake_quant_mx(x, "e2m1")[:3].tolist() == [8.0, 3.0, 1.0]
    # blocks are independent: a second block of small values keeps its own scale
    y = torch.cat([x, torch.full((32,), 0.01)])
    assert fake_quant_mx(y, "e2m1")[32:].tolist() == pytest.approx([0.01] * 32, rel=0.3)
    # MXINT8 (amax 10 → scale 8, element step 2^-6·8 = 0.125): 10 is exact; 1.0625 → 8.5 steps → 8 (tie to even)
    z = torch.zeros(32)
    z[:4] = t(10.0, 1.0625, -0.0625, 0.03125)
    assert fake_quant_mx(z, "int8")[:4].tolist() == [10.0, 1.0, 0.0, 0.0]


def test_mxint8_symmetric_clipping():
    """A block whose amax is just below the next power of two: amax/scale approaches 2, beyond int8's 127/64 (the
    code −128 is never used): it saturates at ±127·2^-6·scale."""
    z = torch.zeros(32)
    z[0], z[1] = -15.99, 15.99  # scale 2^3; 15.99/8·64 = 127.92 → 127 (saturated), −127 on the negative side
    got = fake_quant_mx(z, "int8")
    assert got[0].item() == -127 / 64 * 8 and got[1].item() == 127 / 64 * 8


def test_nvfp4_two_level_scale_hand_worked():
    x = torch.zeros(32)
    x[0], x[1], x[16] = 6.0, 1.0, 0.75
    # tensor scale 6/(6·448) = 1/448; block 0: e4m3(6 / 6 · 448) = 448 → s = 1; 6 → 6, 1 → 1
    # block 1: amax 0.75 → e4m3(0.75/6·448 = 56) = 56 → s = 56/448 = 0.125; 0.75/0.125 = 6 → 6 → 0.75
    got = fake_quant_nvfp4(x)
    assert got[0].item() == 6.0 and got[1].item() == 1.0 and got[16].item() == pytest.approx(0.75)
    assert fake_quant_nvfp4(torch.zeros(16)).abs().sum() == 0


def test_int4_groups_and_padding():
    w = torch.arange(1, 131, dtype=torch.float32)[None]  # 130 values: one group of 128 and a padded group of 2
    got = fake_quant_groups(w, "int4", 128)
    assert got.shape == w.shape and got[0, 127].item() == 128.0 and got[0, 129].item() == 130.0
    # in the first group s = 128/7: 10 → round(0.547) = 1 → 128/7
    assert got[0, 9].item() == pytest.approx(128 / 7)


def test_hadamard_is_orthonormal_and_preserves_products():
    h = hadamard(64)
    torch.testing.assert_close(h @ h.T, torch.eye(64), atol=1e-6, rtol=0)
    x, w = torch.randn(5, 64), torch.randn(7, 64)
    torch.testing.assert_close((x @ h) @ (w @ h).T, x @ w.T, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard(48)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "e2m1"])
def test_fast_paths_equal_the_rounding_rule_everywhere(fmt):
    """The FP8 casts and the e2m1 table give exactly `round_float` on values spanning every binade, the subnormals,
    the exact midpoints (ties) and beyond the largest value (saturation)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50000, generator=g) * 10 ** torch.empty(50000).uniform_(-6, 5, generator=g)
    grid = quantize_elements(x, fmt, exact=True).unique()
    mids = (grid[1:] + grid[:-1]) / 2  # every tie
    x = torch.cat([x, mids, -mids, grid, t(0.0, 1e9, -1e9)])
    torch.testing.assert_close(quantize_elements(x, fmt), quantize_elements(x, fmt, exact=True), rtol=0, atol=0)


def test_clip_search_never_loses_to_absmax_and_wins_on_an_outlier():
    from vidpost.kernels.quant_formats import clipped_fake_quant, fake_quant_groups

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 256, generator=g)
    assert torch.equal(clipped_fake_quant(w, "int4", 128, ratios=(1.0,)), fake_quant_groups(w, "int4", 128))
    assert torch.equal(clipped_fake_quant(w, "int4", None, ratios=(1.0,)), fake_quant(w, "int4", "channel"))
    plain = (fake_quant_groups(w, "int4", 128) - w).pow(2).reshape(16, 2, 128).sum(-1)
    clipped = (clipped_fake_quant(w, "int4", 128) - w).pow(2).reshape(16, 2, 128).sum(-1)
    assert (clipped <= plain).all() and clipped.sum() < 0.9 * plain.sum()  # Gaussian groups: clipping pays
    # hand-worked, int4 (±7): [3, 2, 2, 2] at s = 3/7 codes 7, 5, 5, 5 → error 3·(2 − 15/7)² = 0.0612; at 0.95·s the
    # 3 saturates at 7·0.95·3/7 = 2.85 and each 2 lands on 5·0.95·3/7 = 2.0357: error 0.0263, the better one
    x = torch.tensor([[3.0, 2.0, 2.0, 2.0]])
    want = torch.tensor([[2.85, 2.0357143, 2.0357143, 2.0357143]])
    torch.testing.assert_close(clipped_fake_quant(x, "int4", 4, ratios=(1.0, 0.95)), want, rtol=0, atol=1e-6)
