"""Pure-PyTorch reference of block-sparse (FP8 or unquantised) attention over tile-major blocks.

Inputs are in the layout the kernel sees: ``q, k, v`` [B, H, S, D] in tile-major order, ``S = num_blocks *
block``; ``kv_len[n]`` real tokens at the start of key block ``n`` (the rest is padding, always masked);
``kv_index[b, h, m, :kv_count[b, h, m]]`` the key blocks query block ``m < dense_from`` attends to; query
blocks from ``dense_from`` on (text tokens; all of them for a dense call) attend to every block.

Quantisation (``quant="fp8"``, shared verbatim by the Triton path through :func:`quantize_qkv`):

1. K smoothing: ``K <- K - mean_j K_j`` over the real tokens, per (batch, head). Softmax is invariant to it
   (``q·(k - μ) = q·k - q·μ`` shifts a whole score row by a constant) and it removes the channel-wise bias that
   otherwise dominates K's range (SageAttention).
2. Q and K to float8 e4m3 with one scale per (batch, head, block): ``scale = amax(|x|) / 448`` over the block's
   tokens and channels, ``x8 = fp8(x / scale)`` (round to nearest even, as ``Tensor.to(torch.float8_e4m3fn)``).
   ``granularity="head"`` uses one scale per (batch, head) instead.
3. V to e4m3 with one scale per (batch, head, channel) over the tokens.
4. Scores ``s = (q8 · k8ᵀ) · q_scale · k_scale / sqrt(D)`` in fp32; masked entries are ``-inf``.
5. ``p = exp(s - rowmax)``; the row sum ``l`` is taken on the fp32 ``p``; ``P`` goes into the P·V product as
   ``fp8(p · 448)`` (fixed scale: ``p <= 1``), accumulated in fp32; ``out = (P8 · V8) · v_scale / (448 · l)``.

Departure of the Triton kernel from this reference: the kernel runs an online softmax, so ``p`` is quantised
relative to the running row maximum, not the final one (SageAttention has the same property). Everything else
(the quantised Q, K, V and their scales) is bit-identical; the measured gap is bounded in the tests.

``quant="bf16"`` (no quantisation): fp32 scores and softmax, ``P`` cast to V's dtype before P·V (what a
flash kernel does), fp32 accumulation. On fp32 inputs with a full mask this is exact attention and matches
``F.scaled_dot_product_attention`` to fp32 rounding; it is differentiable (the autograd reference for the
backward pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .block_mask import lists_to_mask

FP8_MAX = 448.0
"""Largest finite float8 e4m3fn value."""
P_SCALE = 448.0
"""Fixed scale of the softmax probabilities before their FP8 cast (``p`` is in [0, 1])."""
_EPS = 1e-12


@dataclass
class QuantizedQKV:
    """FP8 operands and fp32 scales of one attention call."""

    q8: torch.Tensor
    """float8_e4m3fn [B, H, S, D]."""
    k8: torch.Tensor
    """float8_e4m3fn [B, H, S, D], smoothed (mean over real tokens removed)."""
    v8: torch.Tensor
    """float8_e4m3fn [B, H, S, D]."""
    q_scale_BHM: torch.Tensor
    k_scale_BHM: torch.Tensor
    v_scale_BHD: torch.Tensor


def slot_valid(kv_len: torch.Tensor, block: int) -> torch.Tensor:
    """bool [S]: the real (non-padding) slots of a blocked sequence."""
    return (torch.arange(block, device=kv_len.device)[None, :] < kv_len[:, None].long()).reshape(-1)


def _block_scale(x_BHSD: torch.Tensor, block: int, granularity: str) -> torch.Tensor:
    B, H, S, D = x_BHSD.shape
    amax = x_BHSD.abs().reshape(B, H, S // block, block * D).amax(dim=-1)
    if granularity == "head":
        amax = amax.amax(dim=-1, keepdim=True).expand(B, H, S // block)
    elif granularity != "tile":
        raise ValueError(f"granularity must be 'tile' or 'head', got {granularity!r}")
    return (amax.clamp_min(_EPS) / FP8_MAX).contiguous()


def _to_fp8(x_BHSD: torch.Tensor, scale_BHM: torch.Tensor, block: int) -> torch.Tensor:
    B, H, S, D = x_BHSD.shape
    scaled = x_BHSD.reshape(B, H, S // block, block, D) / scale_BHM[..., None, None]
    return scaled.to(torch.float8_e4m3fn).reshape(B, H, S, D)


def quantize_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor, block: int, granularity: str = "tile"
) -> QuantizedQKV:
    """Steps 1-3 of the module docstring: smoothed K, per-block Q/K scales, per-channel V scales."""
    valid = slot_valid(kv_len, block).to(torch.float32)[:, None]  # [S, 1]
    qf, kf, vf = q.float(), k.float(), v.float()
    k_mean = (kf * valid).sum(dim=2, keepdim=True) / valid.sum()
    kf = (kf - k_mean) * valid
    q_scale, k_scale = _block_scale(qf, block, granularity), _block_scale(kf, block, granularity)
    v_scale = (vf.abs().amax(dim=2).clamp_min(_EPS) / FP8_MAX).contiguous()  # [B, H, D]
    v8 = (vf / v_scale[:, :, None, :]).to(torch.float8_e4m3fn)
    return QuantizedQKV(_to_fp8(qf, q_scale, block), _to_fp8(kf, k_scale, block), v8, q_scale, k_scale, v_scale)


def _row_chunk(batch_heads: int, seq: int, block: int) -> int:
    rows = max(block, (1 << 24) // max(1, batch_heads * seq))
    return rows // block * block


def reference_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    kv_len: torch.Tensor,
    block: int,
    dense_from: int,
    quant: str = "bf16",
    granularity: str = "tile",
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Block-sparse attention [B, H, S, D] -> [B, H, S, D] (the module docstring's exact algorithm).

    Processed in chunks of query blocks so memory stays bounded at real video lengths.
    """
    if quant not in ("fp8", "bf16"):
        raise ValueError(f"quant must be 'fp8' or 'bf16', got {quant!r}")
    B, H, S, D = q.shape
    num_blocks = S // block
    assert num_blocks * block == S and kv_len.shape == (num_blocks,)
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    listed = lists_to_mask(kv_index[:, :, :dense_from], kv_count[:, :, :dense_from], num_blocks)
    dense_rows = torch.ones(1, 1, num_blocks - dense_from, num_blocks, dtype=torch.bool, device=q.device)
    block_mask = torch.cat([listed.expand(B, H, -1, -1), dense_rows.expand(B, H, -1, -1)], dim=2)
    key_valid = slot_valid(kv_len, block)
    if quant == "fp8":
        qq = quantize_qkv(q, k, v, kv_len, block, granularity)
        q_op, k_op, v_op = qq.q8.float(), qq.k8.float(), qq.v8.float()
        q_tok = qq.q_scale_BHM.repeat_interleave(block, dim=-1)  # [B, H, S]
        k_tok = qq.k_scale_BHM.repeat_interleave(block, dim=-1)
    else:
        q_op, k_op, v_op = q.float(), k.float(), v

    outs = []
    rows = _row_chunk(B * H, S, block)
    for r0 in range(0, S, rows):
        r1 = min(S, r0 + rows)
        bm = block_mask[:, :, r0 // block : r1 // block]
        mask = bm.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3) & key_valid
        s = q_op[:, :, r0:r1] @ k_op.transpose(-1, -2)
        if quant == "fp8":
            s = s * q_tok[:, :, r0:r1, None] * k_tok[:, :, None, :] * scale
            s = s.masked_fill(~mask, float("-inf"))
            p = torch.exp(s - s.amax(dim=-1, keepdim=True))
            row_sum = p.sum(dim=-1, keepdim=True)
            p8 = (p * P_SCALE).to(torch.float8_e4m3fn).float()
            o = (p8 @ v_op) * qq.v_scale_BHD[:, :, None, :] / (P_SCALE * row_sum)
        else:
            s = (s * scale).masked_fill(~mask, float("-inf"))
            p = torch.softmax(s, dim=-1)
            o = p.to(v.dtype).float() @ v_op.float()
        outs.append(o)
    return torch.cat(outs, dim=2).to(q.dtype)
