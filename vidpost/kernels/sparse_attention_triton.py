"""Triton forward kernel of block-sparse FP8 / bf16 attention over tile-major blocks.

One program computes one query block (``BLOCK`` rows) of one (batch, head). It walks the key blocks listed in
``kv_index[b, h, m, :kv_count[b, h, m]]`` (query blocks ``m >= dense_from`` and ``DENSE`` calls: all blocks) with a flash-attention online
softmax in base 2 (``sm_scale · log2 e`` folded into the Q scale):

    s = (q · kᵀ) · q_scale[m] · k_scale[n]              fp32 accumulation (tl.dot)
    s[:, slot >= kv_len[n]] = -inf                      padded keys
    m_new = max(m, rowmax s); α = 2^(m - m_new); p = 2^(s - m_new)
    l = α·l + rowsum p;  acc = α·acc + P·V              P·V: fp8(p·448) · v8 (FP8) or p.to(v.dtype) · v
    out = acc / l  (· v_scale / 448 for FP8)

The FP8 operands and scales come from :func:`~vidpost.kernels.sparse_attention_reference.quantize_qkv`, so
they are the reference's bit for bit. On sm90 the FP8 products are ``tl.dot`` on ``float8e4nv`` with fp32
accumulation; V is stored transposed ([D, S], K-major for the P·V product, as SageAttention does). Under
``TRITON_INTERPRET=1`` the interpreter's low-precision ``tl.dot`` is unreliable, so ``UPCAST`` converts the
operands to fp32 first (fp8 and bf16 values are exact in fp32, so nothing is lost), the fp32 -> e4m3 cast of
``P`` is emulated exactly in fp32 arithmetic (the interpreter's own cast rounds wrongly just below powers of
two), and a single small config is used instead of the autotune list. The same ``UPCAST`` path runs FP8 plans
on GPUs without FP8 tensor cores (before sm89).

Backward (unquantised path only; FP8 is inference-only), FlashAttention-2 style with the forward's base-2
row log-sum-exp ``lse`` and ``delta = rowsum(dO * O)``, ``p = 2^(s - lse)``, ``ds = p * (dO·Vᵀ - delta)``:

- ``_block_sparse_attn_bwd_dq``: one program per query block walks its key list; ``dQ = sm_scale · ds·K``.
- ``_block_sparse_attn_bwd_dkdv``: one program per key block walks the query blocks that attend to it (the
  transposed lists; dense rows included), in slices of ``SUB_M`` query rows to keep registers low;
  ``dV = pᵀ·dO``, ``dK = sm_scale · dsᵀ·Q``. No atomics.

Padded query rows get ``dO = 0`` from the reorder's backward, so they contribute nothing; padded keys have
``p = 0``.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """True when Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _round_to_e4m3(x):
    """Round non-negative fp32 ``x <= 448`` to the nearest float8 e4m3fn value (ties to even), in fp32 arithmetic.

    Used on the ``UPCAST`` path: Triton's interpreter converts fp32 -> fp8 wrongly just below a power of two
    (e.g. 31.5 -> 16 instead of 32), so the cast is emulated exactly: quantum ``2^(max(e, -6) - 3)`` from the fp32
    exponent ``e`` (3 mantissa bits; subnormals below ``2^-6``), then round-half-even of ``x / quantum`` by the
    ``+ 2^23 - 2^23`` trick (exact for values below ``2^23``).
    """
    exponent = ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    quantum = ((tl.maximum(exponent, -6) - 3 + 127) << 23).to(tl.float32, bitcast=True)
    return ((x / quantum + 8388608.0) - 8388608.0) * quantum


def _configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3, 4)]


@triton.autotune(configs=_configs(), key=["HEAD_DIM", "BLOCK", "FP8", "DENSE"])
@triton.jit
def _block_sparse_attn_fwd(
    Q,
    K,
    V,
    Out,
    Lse,
    QScale,
    KScale,
    VScale,
    KvIndex,
    KvCount,
    KvLen,
    seq_len,
    num_blocks,
    dense_from,
    list_len,
    sm_scale_log2,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    FP8: tl.constexpr,
    DENSE: tl.constexpr,
    UPCAST: tl.constexpr,
    P_SCALE: tl.constexpr,
    V_TRANSPOSED: tl.constexpr,
    STORE_LSE: tl.constexpr,
):
    m_blk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_r = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    base = bh * seq_len * HEAD_DIM
    offs_m = m_blk * BLOCK + offs_r

    q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :])
    if UPCAST:
        q = q.to(tl.float32)
    if FP8:
        q_scale = tl.load(QScale + bh * num_blocks + m_blk) * sm_scale_log2
    else:
        q_scale = sm_scale_log2

    m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK], dtype=tl.float32)
    acc = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)

    # Query blocks from `dense_from` on (text) attend to every block; the others walk their key list.
    row_dense = m_blk >= dense_from
    list_row = bh * dense_from + tl.minimum(m_blk, dense_from - 1)
    if DENSE:
        count = num_blocks
    else:
        count = tl.where(row_dense, num_blocks, tl.load(KvCount + list_row))
    for j in range(0, count):
        if DENSE:
            n_blk = j
        else:
            listed = tl.load(KvIndex + list_row * list_len + tl.minimum(j, list_len - 1))
            n_blk = tl.where(row_dense, j, listed)
        offs_n = n_blk * BLOCK + offs_r
        k = tl.load(K + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :])  # [BLOCK, D]
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k))
        if FP8:
            s = s * (q_scale * tl.load(KScale + bh * num_blocks + n_blk))
        else:
            s = s * q_scale
        valid = tl.load(KvLen + n_blk)
        s = tl.where(offs_r[None, :] < valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        if V_TRANSPOSED:  # stored [D, S]: the reduction dim (tokens) contiguous
            v = tl.load(V + base + offs_d[None, :] * seq_len + offs_n[:, None])  # [BLOCK, D]
        else:
            v = tl.load(V + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :])
        if UPCAST:
            p_op = _round_to_e4m3(p * P_SCALE) if FP8 else p.to(v.dtype).to(tl.float32)
            v = v.to(tl.float32)
        elif FP8:
            p_op = (p * P_SCALE).to(tl.float8e4nv, fp_downcast_rounding="rtne")
        else:
            p_op = p.to(v.dtype)
        acc = tl.dot(p_op, v, acc)
        m_i = m_new

    l_i = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_i[:, None]
    if FP8:
        out = out * (tl.load(VScale + bh * HEAD_DIM + offs_d)[None, :] / P_SCALE)
    tl.store(Out + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty))
    if STORE_LSE:  # base-2 log-sum-exp of the scaled scores, for the backward pass
        tl.store(Lse + bh * seq_len + offs_m, m_i + tl.math.log2(l_i))


def triton_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    kv_len: torch.Tensor,
    block: int,
    dense_from: int,
    out_dtype: torch.dtype,
    q_scale: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the kernel on prepared operands (FP8 when scales are given). [B, H, S, D] -> [B, H, S, D].

    ``lse``: optional fp32 [B, H, S] that receives the base-2 log-sum-exp of each row (for the backward pass).

    ``kv_index`` [B|1, H|1, dense_from, L] / ``kv_count`` [B|1, H|1, dense_from]: key lists of the query blocks
    before ``dense_from``; later blocks are dense. ``D`` must be a power of two >= 16 (the caller pads).
    """
    B, H, S, D = q.shape
    num_blocks = S // block
    assert num_blocks * block == S and D >= 16 and D & (D - 1) == 0 and block >= 16 and block & (block - 1) == 0
    fp8 = q_scale is not None
    dense = dense_from == 0
    scale = (1.0 / math.sqrt(D) if sm_scale is None else sm_scale) * _LOG2E
    q, k = q.contiguous(), k.contiguous()
    v = v.transpose(-1, -2).contiguous() if fp8 else v.contiguous()  # FP8: [B, H, D, S]
    if out is None:
        out = torch.empty(B, H, S, D, device=q.device, dtype=out_dtype)
    assert out.shape == (B, H, S, D) and out.dtype == out_dtype and out.is_contiguous()
    dummy = torch.zeros(1, device=q.device, dtype=torch.int32)
    fdummy = torch.zeros(1, device=q.device, dtype=torch.float32)
    list_len = 1 if dense else kv_index.shape[-1]
    rows = dense_from
    grid = (num_blocks, B * H)
    _block_sparse_attn_fwd[grid](
        q,
        k,
        v,
        out,
        fdummy if lse is None else lse,
        q_scale.contiguous() if fp8 else fdummy,
        k_scale.contiguous() if fp8 else fdummy,
        v_scale.contiguous() if fp8 else fdummy,
        dummy if dense else kv_index.expand(B, H, rows, list_len).contiguous(),
        dummy if dense else kv_count.expand(B, H, rows).contiguous(),
        kv_len.to(torch.int32).contiguous(),
        S,
        num_blocks,
        dense_from,
        list_len,
        scale,
        HEAD_DIM=D,
        BLOCK=block,
        FP8=fp8,
        DENSE=dense,
        UPCAST=interpreting() or (fp8 and torch.cuda.get_device_capability(q.device) < (8, 9)),
        P_SCALE=448.0,
        V_TRANSPOSED=fp8,
        STORE_LSE=lse is not None,
    )
    return out


# ------------------------------------------------------------------------------------------ backward (unquantised)


@triton.autotune(configs=_configs(), key=["HEAD_DIM", "BLOCK", "DENSE"])
@triton.jit
def _block_sparse_attn_bwd_dq(
    Q,
    K,
    V,
    dO,
    Lse,
    Delta,
    dQ,
    KvIndex,
    KvCount,
    KvLen,
    seq_len,
    num_blocks,
    dense_from,
    list_len,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    DENSE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """dQ of one query block: walk the same key list as the forward pass."""
    m_blk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_r = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    base = bh * seq_len * HEAD_DIM
    offs_m = m_blk * BLOCK + offs_r
    q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :])
    do = tl.load(dO + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :])
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(Lse + bh * seq_len + offs_m)
    delta = tl.load(Delta + bh * seq_len + offs_m)
    dq = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)
    scale_log2 = sm_scale * 1.4426950408889634

    row_dense = m_blk >= dense_from
    list_row = bh * dense_from + tl.minimum(m_blk, dense_from - 1)
    if DENSE:
        count = num_blocks
    else:
        count = tl.where(row_dense, num_blocks, tl.load(KvCount + list_row))
    for j in range(0, count):
        if DENSE:
            n_blk = j
        else:
            listed = tl.load(KvIndex + list_row * list_len + tl.minimum(j, list_len - 1))
            n_blk = tl.where(row_dense, j, listed)
        offs_n = n_blk * BLOCK + offs_r
        k = tl.load(K + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :])
        v = tl.load(V + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :])
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * scale_log2
        valid = tl.load(KvLen + n_blk)
        p = tl.where(offs_r[None, :] < valid, tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
    tl.store(dQ + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], (dq * sm_scale).to(dQ.dtype.element_ty))


@triton.autotune(configs=_configs(), key=["HEAD_DIM", "BLOCK", "DENSE"])
@triton.jit
def _block_sparse_attn_bwd_dkdv(
    Q,
    K,
    V,
    dO,
    Lse,
    Delta,
    dK,
    dV,
    QIndex,
    QCount,
    KvLen,
    seq_len,
    num_blocks,
    list_len,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    DENSE: tl.constexpr,
    UPCAST: tl.constexpr,
    SUB_M: tl.constexpr,
):
    """dK, dV of one key block: walk the query blocks that attend to it (the transposed lists)."""
    n_blk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_r = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    base = bh * seq_len * HEAD_DIM
    offs_n = n_blk * BLOCK + offs_r
    k = tl.load(K + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :])
    v = tl.load(V + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :])
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    valid = tl.load(KvLen + n_blk)
    dk = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)
    scale_log2 = sm_scale * 1.4426950408889634

    list_row = bh * num_blocks + n_blk
    if DENSE:
        count = num_blocks
    else:
        count = tl.load(QCount + list_row)
    offs_sub = tl.arange(0, SUB_M)
    for j in range(0, count):
        if DENSE:
            m_blk = j
        else:
            m_blk = tl.load(QIndex + list_row * list_len + j)
        for sub in range(0, BLOCK, SUB_M):  # query rows in slices: fewer live registers
            offs_m = m_blk * BLOCK + sub + offs_sub
            q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :])
            do = tl.load(dO + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :])
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(Lse + bh * seq_len + offs_m)
            delta = tl.load(Delta + bh * seq_len + offs_m)
            s = tl.dot(q, tl.trans(k)) * scale_log2  # [SUB_M, BLOCK]
            p = tl.where(offs_r[None, :] < valid, tl.math.exp2(s - lse[:, None]), 0.0)
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk)
    tl.store(dK + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], (dk * sm_scale).to(dK.dtype.element_ty))
    tl.store(dV + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], dv.to(dV.dtype.element_ty))


def triton_block_sparse_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    q_index: torch.Tensor,
    q_count: torch.Tensor,
    kv_len: torch.Tensor,
    block: int,
    dense_from: int,
    sm_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV of the unquantised path (FlashAttention-2 style, two kernels, no atomics).

    ``lse`` is the forward's base-2 log-sum-exp; ``q_index``/``q_count`` [B|1, H|1, M, Lq] list, per key block,
    the query blocks that attend to it (the transpose of the forward's lists plus the dense rows). ``D`` must be
    a power of two >= 16.
    """
    B, H, S, D = q.shape
    num_blocks = S // block
    dense = dense_from == 0
    q, k, v, out, grad_out = (x.contiguous() for x in (q, k, v, out, grad_out))
    delta = (grad_out.float() * out.float()).sum(dim=-1).contiguous()  # rowsum(dO * O)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dummy = torch.zeros(1, device=q.device, dtype=torch.int32)
    upcast = interpreting()
    grid = (num_blocks, B * H)
    kv_len = kv_len.to(torch.int32).contiguous()
    list_len = 1 if dense else kv_index.shape[-1]
    _block_sparse_attn_bwd_dq[grid](
        q,
        k,
        v,
        grad_out,
        lse,
        delta,
        dq,
        dummy if dense else kv_index.expand(B, H, dense_from, list_len).contiguous(),
        dummy if dense else kv_count.expand(B, H, dense_from).contiguous(),
        kv_len,
        S,
        num_blocks,
        dense_from,
        list_len,
        sm_scale,
        HEAD_DIM=D,
        BLOCK=block,
        DENSE=dense,
        UPCAST=upcast,
    )
    q_len = 1 if dense else q_index.shape[-1]
    _block_sparse_attn_bwd_dkdv[grid](
        q,
        k,
        v,
        grad_out,
        lse,
        delta,
        dk,
        dv,
        dummy if dense else q_index.expand(B, H, num_blocks, q_len).contiguous(),
        dummy if dense else q_count.expand(B, H, num_blocks).contiguous(),
        kv_len,
        S,
        num_blocks,
        q_len,
        sm_scale,
        HEAD_DIM=D,
        BLOCK=block,
        DENSE=dense,
        UPCAST=upcast,
        SUB_M=min(block, 16 if upcast else 32),  # 32 rows: no spills at block 128, d128 on sm90
    )
    return dq, dk, dv
