"""Enhance-A-Video cross-frame intensity (CFI): reference, chunked PyTorch path and Triton kernel.

Algorithm (Enhance-A-Video, Luo et al. 2025). Inputs are the post-norm, post-RoPE query and key of one video
self-attention layer, `[B, S, H, D]` with frame-major tokens, S = F·P (F latent frames, P = H'·W' spatial
positions, token index f·P + p). For every sample b, spatial position p and head h, the F tokens at (·, p, h)
form a sequence over time; its temporal attention map is

    A = softmax(Q_p Kᵀ_p / √D)          (F × F, computed in float32)

and the cross-frame intensity is the mean, over all (p, h) maps, of the mean off-diagonal entry of A. Each row
of A sums to one, so the mean off-diagonal entry of a map equals Σ_i (1 − A_ii) / (F·(F − 1)); the fast paths
use that identity and only need the diagonal probability of every row (online softmax over the row).
The gain applied to the attention branch is g = max(1, (F + w)·CFI) (`eav_gain`).

Departures from the paper's code:
- CFI is computed per sample (`cross_frame_intensity_per_sample` → [B]) instead of one mean over the batch, so
  a prompt's video does not depend on the other prompts in its batch. `cross_frame_intensity` returns the
  batch mean, which equals the paper's value (every sample has the same number of maps).
- F = 1 has no off-diagonal entries: CFI is defined as 0 there (so g = 1, Enhance-A-Video is a no-op).

Three layers, as every op in `kernels/`:
- `cross_frame_intensity_reference`: permutes Q and K to [B, P, H, F, D], forms A and averages its masked
  off-diagonal; simple and memory-hungry (full-size float32 copies of low-precision Q and K, B·P·H·F² scores).
- `_cfi_chunked`: the same maths, with A_ii = 1 / Σ_j exp((s_ij − s_ii)/√D) (cheaper than a softmax over
  rows of length F), over chunks of `chunk` spatial positions, reading strided views of Q and K;
  the largest temporary is a float32 copy of one chunk (B·F·chunk·H·D), never a full-size permuted copy.
- `_cfi_triton`: one program per (b·h, block of BLOCK_P spatial positions) reads Q and K in place through their
  strides, runs an online softmax over each row's F scores (elementwise products, no `tl.dot`, float32
  accumulation) and writes one partial sum of (1 − A_ii) per program; the host sums the partials.
`cross_frame_intensity_per_sample` picks Triton for CUDA tensors when Triton imports (or on CPU when this module
was imported under `TRITON_INTERPRET=1`, which builds the kernel for Triton's interpreter), else the chunked path. `VIDPOST_EAV_IMPL=reference|chunked|triton` (or the `impl`
argument) forces one side.
"""

from __future__ import annotations

import math
import os

import torch

try:  # Triton is optional: CPU-only installs use the chunked path.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAS_TRITON = False

IMPLS = ("auto", "reference", "chunked", "triton")
ENV_IMPL = "VIDPOST_EAV_IMPL"
DEFAULT_CHUNK = 256
"""Spatial positions per chunk of the PyTorch path."""


def _check(query: torch.Tensor, key: torch.Tensor, num_frames: int) -> tuple[int, int, int, int, int]:
    if query.ndim != 4 or key.shape != query.shape:
        raise ValueError(
            f"query and key must both be [B, S, H, D] with the same shape, got {tuple(query.shape)} "
            f"and {tuple(key.shape)}"
        )
    b, s, h, d = query.shape
    if num_frames < 1 or s % num_frames != 0:
        raise ValueError(f"sequence length {s} is not a multiple of num_frames={num_frames} (frame-major tokens)")
    return b, s, h, d, s // num_frames


def cross_frame_intensity_reference(query: torch.Tensor, key: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-sample CFI [B] (float32) by forming every F×F temporal attention map explicitly."""
    b, _, h, d, p = _check(query, key, num_frames)
    f = num_frames
    if f == 1:
        return torch.zeros(b, dtype=torch.float32, device=query.device)
    q = query.float().unflatten(1, (f, p)).permute(0, 2, 3, 1, 4)  # [B, P, H, F, D]
    k = key.float().unflatten(1, (f, p)).permute(0, 2, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # [B, P, H, F, F]
    off = ~torch.eye(f, dtype=torch.bool, device=query.device)
    return attn[..., off].reshape(b, -1).mean(dim=1)


def _cfi_chunked(query: torch.Tensor, key: torch.Tensor, num_frames: int, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    b, _, h, d, p = _check(query, key, num_frames)
    f = num_frames
    if f == 1:
        return torch.zeros(b, dtype=torch.float32, device=query.device)
    qv = query.unflatten(1, (f, p))  # views: [B, F, P, H, D]
    kv = key.unflatten(1, (f, p))
    diag_sum = None
    scale = 1.0 / math.sqrt(d)
    for p0 in range(0, p, chunk):
        # [B, c, H, F, D] strided views (float32 inputs) or chunk-sized float32 copies (low-precision inputs)
        qc = qv[:, :, p0 : p0 + chunk].permute(0, 2, 3, 1, 4).float()
        kc = kv[:, :, p0 : p0 + chunk].permute(0, 2, 3, 1, 4).float()
        scores = torch.matmul(qc, kc.transpose(-1, -2))  # [B, c, H, F, F], unscaled
        # A_ii = 1 / Σ_j exp((s_ij − s_ii)/√D) (an overflow to inf gives the right limit, A_ii = 0)
        rel = (scores - scores.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)).mul_(scale).exp_()
        part = rel.sum(dim=-1).reciprocal_().sum(dim=(1, 2, 3))  # Σ A_ii per sample
        diag_sum = part if diag_sum is None else diag_sum + part
    rows = p * h * f
    return (rows - diag_sum) / (rows * (f - 1))


if HAS_TRITON:

    @triton.jit
    def _cfi_kernel(
        q_ptr,
        k_ptr,
        out_ptr,
        P,
        H,
        D,
        F,
        n_pblocks,
        sq_b,
        sq_s,
        sq_h,
        sq_d,
        sk_b,
        sk_s,
        sk_h,
        sk_d,
        scale,
        BLOCK_P: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_bh = tl.program_id(0)
        pid_p = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_p < P
        mask = row_ok[:, None] & (offs_d[None, :] < D)
        q_base = q_ptr + b * sq_b + h * sq_h + offs_d[None, :].to(tl.int64) * sq_d
        k_base = k_ptr + b * sk_b + h * sk_h + offs_d[None, :].to(tl.int64) * sk_d
        acc = tl.zeros([BLOCK_P], dtype=tl.float32)
        for i in range(F):
            tok_i = (i * P + offs_p).to(tl.int64)
            qi = tl.load(q_base + tok_i[:, None] * sq_s, mask=mask, other=0.0).to(tl.float32)
            m = tl.full([BLOCK_P], float("-inf"), dtype=tl.float32)
            l_sum = tl.zeros([BLOCK_P], dtype=tl.float32)
            s_ii = tl.zeros([BLOCK_P], dtype=tl.float32)
            for j in range(F):
                tok_j = (j * P + offs_p).to(tl.int64)
                kj = tl.load(k_base + tok_j[:, None] * sk_s, mask=mask, other=0.0).to(tl.float32)
                s = tl.sum(qi * kj, axis=1) * scale
                m_new = tl.maximum(m, s)
                l_sum = l_sum * tl.exp(m - m_new) + tl.exp(s - m_new)
                m = m_new
                s_ii = tl.where(j == i, s, s_ii)
            p_ii = tl.exp(s_ii - m) / l_sum
            acc += tl.where(row_ok, 1.0 - p_ii, 0.0)
        tl.store(out_ptr + pid_bh * n_pblocks + pid_p, tl.sum(acc, axis=0))


def _cfi_triton(query: torch.Tensor, key: torch.Tensor, num_frames: int, block_p: int = 32) -> torch.Tensor:
    if not HAS_TRITON:
        raise RuntimeError("the Triton CFI kernel needs the `triton` package")
    b, _, h, d, p = _check(query, key, num_frames)
    f = num_frames
    if f == 1:
        return torch.zeros(b, dtype=torch.float32, device=query.device)
    n_pblocks = triton.cdiv(p, block_p)
    partial = torch.empty(b * h, n_pblocks, dtype=torch.float32, device=query.device)
    _cfi_kernel[(b * h, n_pblocks)](
        query,
        key,
        partial,
        p,
        h,
        d,
        f,
        n_pblocks,
        *query.stride(),
        *key.stride(),
        1.0 / math.sqrt(d),
        BLOCK_P=block_p,
        BLOCK_D=triton.next_power_of_2(d),
    )
    return partial.view(b, h * n_pblocks).sum(dim=1) / (p * h * f * (f - 1))


def triton_interpreted() -> bool:
    """Whether the kernel was built for Triton's interpreter (TRITON_INTERPRET=1 when this module was imported)."""
    if not HAS_TRITON:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_cfi_kernel, InterpretedFunction)


def _triton_usable(t: torch.Tensor) -> bool:
    return HAS_TRITON and (t.is_cuda or triton_interpreted())


def resolve_impl(impl: str | None, like: torch.Tensor) -> str:
    """The path `impl` ("auto"/None → per device; `$VIDPOST_EAV_IMPL` wins over "auto") resolves to."""
    impl = impl or "auto"
    if impl == "auto":
        impl = os.environ.get(ENV_IMPL) or "auto"
    if impl not in IMPLS:
        raise ValueError(f"unknown Enhance-A-Video implementation {impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        return "triton" if _triton_usable(like) else "chunked"
    if impl == "triton" and not _triton_usable(like):
        raise ValueError(
            "impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before import, on CPU) and the triton package"
        )
    return impl


def cross_frame_intensity_per_sample(
    query: torch.Tensor, key: torch.Tensor, num_frames: int, *, impl: str | None = None
) -> torch.Tensor:
    """CFI of every sample, float32 [B]. query/key: [B, S, H, D], frame-major tokens, S = num_frames·P."""
    with torch.no_grad():
        path = resolve_impl(impl, query)
        if path == "reference":
            return cross_frame_intensity_reference(query, key, num_frames)
        if path == "triton":
            return _cfi_triton(query, key, num_frames)
        return _cfi_chunked(query, key, num_frames)


def cross_frame_intensity(
    query: torch.Tensor, key: torch.Tensor, num_frames: int, *, impl: str | None = None
) -> float:
    """Mean CFI over all temporal attention maps of the batch (the paper's scalar)."""
    return float(cross_frame_intensity_per_sample(query, key, num_frames, impl=impl).mean())


def eav_gain(cfi: torch.Tensor | float, num_frames: int, weight: float) -> torch.Tensor:
    """g = max(1, (F + w)·CFI), elementwise over `cfi`."""
    cfi = torch.as_tensor(cfi, dtype=torch.float32)
    return ((num_frames + weight) * cfi).clamp(min=1.0)


__all__ = [
    "HAS_TRITON",
    "cross_frame_intensity",
    "cross_frame_intensity_per_sample",
    "cross_frame_intensity_reference",
    "eav_gain",
    "resolve_impl",
]
