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
4. Per query block, the listed key blocks in list order (ascending), with an online softmax in base 2:
   ``s = (q8 · k8ᵀ) · (q_scale · log2(e) / sqrt(D) · k_scale)`` in fp32, padded keys ``-inf``;
   ``m' = max(m, rowmax s)``, ``α = 2^(m - m')``, ``p = 2^(s - m')``, ``l = α·l + rowsum p`` (fp32 ``p``),
   ``acc = α·acc + fp8(p · 448) · v8`` (fixed P scale: ``p <= 1``; fp32 accumulation).
5. ``out = acc / l · v_scale / 448``.

This is the Triton kernel's exact order of operations, so ``P`` is quantised against the *running* row maximum
as in the kernel (and in SageAttention), and kernel and reference agree to fp32 rounding (an fp32 rounding
difference can flip one FP8 code of ``P`` now and then; the tests bound the gap). The reference is the
algorithm's definition; it is slow (a Python loop over list positions) and meant for tests and CPU fallback.

Departures from SageAttention(2): Q and K are FP8 e4m3 with per-tile scales (SageAttention2 uses INT8/INT4 with
per-warp/per-thread scales); V is not smoothed; the fp32 accumulator is not emulated at reduced precision.

``quant="bf16"`` (no quantisation): fp32 scores and softmax, ``P`` cast to V's dtype before P·V, fp32
accumulation. (Here ``P`` is normalised before the cast; the kernel casts the unnormalised running ``P``, so on
bf16 inputs the two differ by bf16 rounding.) On fp32 inputs with a full mask this is exact attention and matches
``F.scaled_dot_product_attention`` to fp32 rounding; it is differentiable (the autograd reference for the
backward pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .block_mask import lists_to_mask

FP8_MAX = 448.0
"""Largest finite float8 e4m3fn value."""
LOG2E = 1.4426950408889634
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


def _key_lists(
    kv_index: torch.Tensor, kv_count: torch.Tensor, dense_from: int, num_blocks: int, B: int, H: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of every query block ([B, H, M, L'] and [B, H, M]); dense rows list all blocks in order."""
    width = kv_index.shape[-1]
    L = width if dense_from > 0 else 0
    if dense_from < num_blocks:
        L = max(L, num_blocks)
    listed = kv_index[:, :, :dense_from].long()
    if width < L:
        listed = F.pad(listed, (0, L - width))  # entries past kv_count are never used
    listed = listed.expand(B, H, dense_from, L)
    dense = torch.arange(L, device=kv_index.device).clamp_max(num_blocks - 1)
    dense = dense.expand(B, H, num_blocks - dense_from, L)
    count = torch.cat(
        [
            kv_count[:, :, :dense_from].long().expand(B, H, dense_from),
            torch.full((B, H, num_blocks - dense_from), num_blocks, device=kv_index.device),
        ],
        dim=2,
    )
    return torch.cat([listed, dense], dim=2), count


def _fp8_online(
    qq: QuantizedQKV,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    kv_len: torch.Tensor,
    block: int,
    dense_from: int,
    scale: float,
) -> torch.Tensor:
    """Step 4-5 in the kernel's order: walk each query block's key list with a base-2 online softmax."""
    B, H, S, D = qq.q8.shape
    M = S // block
    index, count = _key_lists(kv_index, kv_count, dense_from, M, B, H)
    q = qq.q8.float().reshape(B, H, M, block, D)
    k = qq.k8.float().reshape(B, H, M, block, D)
    v = qq.v8.float().reshape(B, H, M, block, D)
    q_scale = qq.q_scale_BHM * (scale * LOG2E)  # [B, H, M]
    slot = torch.arange(block, device=q.device)
    m_i = torch.full((B, H, M, block), float("-inf"), device=q.device)
    l_i = torch.zeros(B, H, M, block, device=q.device)
    acc = torch.zeros(B, H, M, block, D, device=q.device)
    for j in range(index.shape[-1]):
        active = (j < count)[..., None]  # [B, H, M, 1]
        n = index[..., j]  # [B, H, M]
        k_n = torch.gather(k, 2, n[..., None, None].expand(B, H, M, block, D))
        v_n = torch.gather(v, 2, n[..., None, None].expand(B, H, M, block, D))
        s = (q @ k_n.transpose(-1, -2)) * (q_scale * torch.gather(qq.k_scale_BHM, 2, n))[..., None, None]
        s = s.masked_fill(slot >= kv_len[n][..., None, None], float("-inf"))
        m_new = torch.maximum(m_i, s.amax(dim=-1))
        alpha = torch.exp2(m_i - m_new)
        p = torch.exp2(s - m_new[..., None])
        p8 = (p * P_SCALE).to(torch.float8_e4m3fn).float()
        l_i = torch.where(active, l_i * alpha + p.sum(dim=-1), l_i)
        acc = torch.where(active[..., None], acc * alpha[..., None] + p8 @ v_n, acc)
        m_i = torch.where(active, m_new, m_i)
    out = acc / l_i[..., None] * (qq.v_scale_BHD[:, :, None, None, :] / P_SCALE)
    return out.reshape(B, H, S, D), (m_i + torch.log2(l_i)).reshape(B, H, S)


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
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention [B, H, S, D] -> [B, H, S, D] (the module docstring's exact algorithm).

    ``return_lse``: also return the fp32 [B, H, S] base-2 log-sum-exp of each row's scaled scores
    (``log2 sum_j 2^(s_j · log2 e)``), as the Triton kernel stores it for the backward pass.

    The unquantised path is processed in chunks of query blocks so memory stays bounded at real video lengths;
    the FP8 path holds one [B, H, S, block] score tile per step of the key lists.
    """
    if quant not in ("fp8", "bf16"):
        raise ValueError(f"quant must be 'fp8' or 'bf16', got {quant!r}")
    B, H, S, D = q.shape
    num_blocks = S // block
    assert num_blocks * block == S and kv_len.shape == (num_blocks,) and 0 <= dense_from <= num_blocks
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    if quant == "fp8":
        qq = quantize_qkv(q, k, v, kv_len, block, granularity)
        out, lse = _fp8_online(qq, kv_index, kv_count, kv_len, block, dense_from, scale)
        return (out.to(q.dtype), lse) if return_lse else out.to(q.dtype)

    listed = lists_to_mask(kv_index[:, :, :dense_from], kv_count[:, :, :dense_from], num_blocks)
    dense_rows = torch.ones(1, 1, num_blocks - dense_from, num_blocks, dtype=torch.bool, device=q.device)
    block_mask = torch.cat([listed.expand(B, H, -1, -1), dense_rows.expand(B, H, -1, -1)], dim=2)
    key_valid = slot_valid(kv_len, block)
    outs, lses = [], []
    rows = _row_chunk(B * H, S, block)
    for r0 in range(0, S, rows):
        r1 = min(S, r0 + rows)
        bm = block_mask[:, :, r0 // block : r1 // block]
        mask = bm.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3) & key_valid
        s = ((q[:, :, r0:r1].float() @ k.float().transpose(-1, -2)) * scale).masked_fill(~mask, float("-inf"))
        p = torch.softmax(s, dim=-1)
        outs.append(p.to(v.dtype).float() @ v.float())
        if return_lse:
            lses.append(torch.logsumexp(s, dim=-1) * LOG2E)
    out = torch.cat(outs, dim=2).to(q.dtype)
    return (out, torch.cat(lses, dim=2)) if return_lse else out
