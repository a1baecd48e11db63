"""Low-precision number formats as exact PyTorch references (fake quantisation: quantise → dequantise, float32 out).

Element formats (`FORMATS`), each rounding to nearest with ties to even and saturating at its largest finite value:
- float: `e4m3` (OCP FP8 E4M3FN: bias 7, max 448, subnormals down to 2⁻⁹), `e5m2` (bias 15, max 57344, subnormals
  down to 2⁻¹⁶), `e2m1` (FP4: bias 1, values 0, 0.5, 1, 1.5, 2, 3, 4, 6). `round_float` computes them for any
  (exponent bits, mantissa bits, max): with q = 2^(max(⌊log2|x|⌋, 1 − bias) − m) the spacing of the binade of x
  (the subnormal spacing below the smallest normal), x ↦ q·round_half_even(x/q), then clamp to ±max.
- integer: `int8` and `int4`, symmetric: round_half_even(x) clamped to ±(2^(b−1) − 1) (−128 and −8 are never used:
  symmetric clipping keeps the grid symmetric about zero, which removes the bias a lone negative code adds).

Scaling granularities (`fake_quant`): a scale s per tensor, per output channel (rows of a weight), per token (rows
of an activation), or per block of `block` consecutive elements along the last axis; x̂ = s·Q(x·(1/s)) (the
scaled value is computed with the reciprocal, as torchao's kernels do, so that the codes agree bit for bit).
- absmax scales (`absmax_scale`): s = amax / max(format), so the largest magnitude maps onto the largest code;
- OCP MX (Microscaling spec v1.0): blocks of 32 share an E8M0 scale, a power of two:
  s = 2^(⌊log2 amax⌋ − emax(format)), emax the exponent of the format's largest normal (e4m3 8, e5m2 15, e2m1 2;
  MXINT8's elements are int8 × 2⁻⁶, i.e. emax 0 with 6 fraction bits), clamped to 2^[−127, 127]; elements that
  exceed the format after scaling saturate;
- NVFP4: blocks of 16 e2m1 elements, an E4M3 scale per block s_b = e4m3(amax_b / (6·s_t)) and one float32
  tensor scale s_t = amax / (6·448); x̂ = s_t·s_b·e2m1(x / (s_t·s_b)).

These references are the ground truth the real kernels (torchao's) are tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ElementFormat:
    name: str
    kind: str  # "float" or "int"
    bits: int
    exp_bits: int = 0
    man_bits: int = 0
    max_value: float = 0.0
    emax: int = 0
    """exponent of the largest normal value (OCP MX scale rule)"""
    min_value: float | None = None
    """the most negative code (None: −max_value, a symmetric grid)"""
    scale_divisor: float | None = None
    """absmax scales are amax / scale_divisor (None: max_value)"""

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1


FORMATS: dict[str, ElementFormat] = {
    "e4m3": ElementFormat("e4m3", "float", 8, 4, 3, 448.0, 8),
    "e5m2": ElementFormat("e5m2", "float", 8, 5, 2, 57344.0, 15),
    "e2m1": ElementFormat("e2m1", "float", 4, 2, 1, 6.0, 2),
    "int8": ElementFormat("int8", "int", 8, max_value=127.0),
    "int4": ElementFormat("int4", "int", 4, max_value=7.0),
    "int8_full": ElementFormat("int8_full", "int", 8, max_value=127.0, min_value=-128.0, scale_divisor=127.5),
}
"""`int8_full` is torchao's "symmetric" int8 (its `MappingType.SYMMETRIC`): s = amax / 127.5 over the full code range
[−128, 127], so the positive extreme rounds to 127.5 → 128 and clamps to 127; `int8` is the symmetric ±127 grid."""


def round_float(x: torch.Tensor, exp_bits: int, man_bits: int, max_value: float) -> torch.Tensor:
    """x rounded to the float format (exp_bits, man_bits) with ties to even, saturated at ±max_value (float32)."""
    x = x.float()
    bias = 2 ** (exp_bits - 1) - 1
    mag = x.abs()
    exp = torch.floor(torch.log2(mag.clamp_min(torch.finfo(torch.float32).tiny)))
    exp = exp.clamp_min(1 - bias)  # below the smallest normal: the subnormal spacing
    quantum = torch.exp2(exp - man_bits)
    out = torch.round(mag / quantum) * quantum  # torch.round: half to even
    out = out.clamp_max(max_value)
    return torch.where(mag == 0, mag, out) * torch.sign(x)


def round_int(x: torch.Tensor, bits: int) -> torch.Tensor:
    """round_half_even(x) clamped to ±(2^(bits−1) − 1) (symmetric), float32."""
    q = 2 ** (bits - 1) - 1
    return torch.round(x.float()).clamp(-q, q)


_TORCH_FLOAT8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}

_E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_E2M1_BOUNDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
_E2M1_TIES_UP = torch.tensor([False, True, False, True, False, True, False])
"""e2m1's midpoints; a tie rounds to the even code: up at 0.75, 1.75, 3.5 (to 1, 2, 4), down at 0.25, 1.25, 2.5, 5."""


def _e2m1(x: torch.Tensor) -> torch.Tensor:
    """round_float(x, 2, 1, 6) by table look-up (one bucketize instead of a dozen elementwise passes)."""
    bounds = _E2M1_BOUNDS.to(x.device)
    # a tie that rounds up counts as above its midpoint: its boundary moves one ulp down
    bounds = torch.where(_E2M1_TIES_UP.to(x.device), torch.nextafter(bounds, torch.zeros_like(bounds)), bounds)
    mag = x.abs()
    return _E2M1_VALUES.to(x.device)[torch.bucketize(mag, bounds, right=False)] * torch.sign(x)


def quantize_elements(x: torch.Tensor, fmt: str | ElementFormat, exact: bool = False) -> torch.Tensor:
    """x (already divided by its scale) on the element grid of `fmt`, float32. FP8 uses PyTorch's float8 casts after
    saturating, e2m1 a table look-up; both are tested equal to `round_float` (`exact=True` uses it directly)."""
    f = FORMATS[fmt] if isinstance(fmt, str) else fmt
    if f.kind == "int":
        if f.min_value is not None:
            return torch.round(x.float()).clamp(f.min_value, f.max_value)
        return round_int(x, f.bits)
    if not exact and f.name in _TORCH_FLOAT8:
        return x.float().clamp(-f.max_value, f.max_value).to(_TORCH_FLOAT8[f.name]).float()
    if not exact and f.name == "e2m1":
        return _e2m1(x.float())
    return round_float(x, f.exp_bits, f.man_bits, f.max_value)


def absmax_scale(x: torch.Tensor, fmt: str, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """s = amax / max(fmt) over `dim` (None: the whole tensor), kept broadcastable; a zero amax gives s = 1."""
    a = x.float().abs()
    amax = a.amax() if dim is None else a.amax(dim=dim, keepdim=True)
    f = FORMATS[fmt]
    s = amax / (f.scale_divisor or f.max_value)
    return torch.where(s > 0, s, torch.ones_like(s))


def fake_quant(
    x: torch.Tensor, fmt: str, granularity: str = "tensor", scale: torch.Tensor | None = None
) -> torch.Tensor:
    """s·Q(x/s) with absmax scales per "tensor", per "channel" (each output row of a weight [out, in]) or per "token"
    (each row of an activation [..., features]); with `scale` given: that static (calibrated) scale."""
    if scale is None:
        if granularity == "tensor":
            scale = absmax_scale(x, fmt)
        elif granularity in ("channel", "token"):
            scale = absmax_scale(x, fmt, dim=-1)
        else:
            raise ValueError(f"granularity must be tensor, channel or token, got {granularity!r}")
    return quantize_elements(x.float() * (1.0 / scale), fmt) * scale


def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """x [..., n] → [..., n/block, block] (n padded with zeros to a multiple of block), and the padding."""
    n = x.shape[-1]
    pad = (-n) % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, block), pad


def _unblock(x: torch.Tensor, pad: int) -> torch.Tensor:
    x = x.reshape(*x.shape[:-2], -1)
    return x[..., : x.shape[-1] - pad] if pad else x


MXINT8_FRACTION_BITS = 6
"""MXINT8 elements are two's-complement int8 read as a fixed-point number with 6 fraction bits (OCP MX v1.0)."""


def mx_scale(amax: torch.Tensor, fmt: str) -> torch.Tensor:
    """The OCP MX shared scale 2^(⌊log2 amax⌋ − emax(fmt)) (E8M0: the exponent clamped to [−127, 127]); amax = 0 → 1."""
    emax = 0 if fmt == "int8" else FORMATS[fmt].emax
    e = torch.floor(torch.log2(amax.float().clamp_min(2.0**-149))) - emax
    e = torch.where(amax > 0, e, torch.zeros_like(e)).clamp(-127, 127)
    return torch.exp2(e)


def fake_quant_mx(x: torch.Tensor, fmt: str, block: int = 32) -> torch.Tensor:
    """OCP MX fake quantisation along the last axis: MXFP8 (e4m3 / e5m2), MXFP4 (e2m1) or MXINT8 (int8, symmetric
    clipping to ±127·2⁻⁶), blocks of `block` elements sharing one E8M0 scale."""
    xb, pad = _blocks(x.float(), block)
    s = mx_scale(xb.abs().amax(-1, keepdim=True), fmt)
    if fmt == "int8":
        step = 2.0**-MXINT8_FRACTION_BITS
        q = round_int(xb / s / step, 8) * step
    else:
        q = quantize_elements(xb / s, fmt)
    return _unblock(q * s, pad)


def fake_quant_nvfp4(x: torch.Tensor, block: int = 16) -> torch.Tensor:
    """NVFP4 fake quantisation along the last axis: e2m1 elements, an e4m3 scale per block of 16, one float32 tensor
    scale (see the module docstring)."""
    x = x.float()
    amax = x.abs().amax()
    s_t = amax / (6.0 * 448.0) if amax > 0 else torch.ones((), dtype=torch.float32)
    xb, pad = _blocks(x, block)
    s_b = round_float(xb.abs().amax(-1, keepdim=True) / 6.0 / s_t, 4, 3, 448.0)
    s = s_t * torch.where(s_b > 0, s_b, torch.ones_like(s_b))
    return _unblock(quantize_elements(xb / s, "e2m1") * s, pad)


def fake_quant_groups(x: torch.Tensor, fmt: str, group: int) -> torch.Tensor:
    """Absmax-scaled fake quantisation per group of `group` consecutive elements along the last axis (e.g. INT4
    weights, group 128)."""
    xb, pad = _blocks(x.float(), group)
    s = absmax_scale(xb, fmt, dim=-1)
    return _unblock(quantize_elements(xb * (1.0 / s), fmt) * s, pad)


CLIP_RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))
"""The clipping ratios `clipped_fake_quant` tries by default: 1.0, 0.95, …, 0.5 of the absmax scale."""


def clipped_fake_quant(
    x: torch.Tensor, fmt: str, group: int | None = None, ratios: tuple[float, ...] = CLIP_RATIOS
) -> torch.Tensor:
    """Fake quantisation with a clipped scale per group of `group` elements along the last axis (None: per row): for
    each group the absmax scale times the ratio in `ratios` that minimises the group's squared error ‖x − s·Q(x/s)‖²
    (values beyond the clipped range saturate; ties keep the earlier ratio, so with 1.0 first the result is never
    worse than plain absmax). The grid search of AWQ's weight clipping, on the weight error: a data-free stand-in for
    learnable weight clipping (OmniQuant)."""
    xb, pad = _blocks(x.float(), group) if group else (x.float().unsqueeze(-2), 0)
    base = absmax_scale(xb, fmt, dim=-1)
    best, best_err = None, None
    for r in ratios:
        s = base * r
        q = quantize_elements(xb * (1.0 / s), fmt) * s
        err = (q - xb).pow(2).sum(-1, keepdim=True)
        if best is None:
            best, best_err = q, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, q, best), torch.where(better, err, best_err)
    return _unblock(best, pad) if group else best.squeeze(-2)


def hadamard(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal Sylvester Hadamard matrix H_n / √n (n a power of two): H·Hᵀ = I, so rotating activations by H
    and weights by H leaves x·Wᵀ unchanged while spreading outliers over every channel."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Hadamard rotation needs a power-of-two size, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(dtype)
