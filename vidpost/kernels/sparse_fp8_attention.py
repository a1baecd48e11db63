"""FP8 + block-sparse attention for video DiTs: the wrapper layer (tile reorder, block mask, backend, custom op).

``make_fp8_sparse_attention(options)`` returns ``fn(query_BSHD, key_BSHD, value_BSHD, ctx) -> out_BSHD`` for
joint self-attention over ``ctx.num_video_tokens`` video tokens (frame-major over ``ctx.grid`` = (T, H, W))
followed by any text tokens. Per call:

1. The schedule (:mod:`.attention_schedule`) gives the plan for ``(ctx.step, ctx.num_steps, ctx.layer)``:
   dense or sparse (STA-like window and/or VSA-like pooled top-k), FP8 or unquantised, scale granularity.
2. Video tokens are permuted to tile-major order (:mod:`.tile_layout`, padding slots zero and masked as keys);
   text tokens follow, padded to whole blocks. Q, K, V go to [B, H, S, D].
3. The block mask (:mod:`.block_mask`) becomes per-query-block key lists (static length, so shapes never
   depend on data); text blocks are attended by and attend to everything.
4. ``torch.ops.vidpost.block_sparse_attention`` (a ``torch.library.custom_op`` with a fake implementation,
   so ``torch.compile(fullgraph=True)`` keeps one graph) runs the Triton kernel
   (:mod:`.sparse_attention_triton`) or the PyTorch reference (:mod:`.sparse_attention_reference`). FP8
   operands are produced by one shared function, so both backends see identical quantised Q, K, V.
5. The output is permuted back to frame-major order; padded rows are dropped.

Backend: chosen once when the function is made. ``"auto"`` = Triton when CUDA is available, else the
reference; the environment variable ``VIDPOST_ATTENTION_BACKEND`` (``triton`` | ``reference`` | ``auto``)
overrides the option (tests force the Triton path on the CPU with ``TRITON_INTERPRET=1``). On a GPU older
than sm89 the FP8 plans run the same kernel with the FP8 operands upcast to fp32 before ``tl.dot``.

Backward: only the unquantised (``quant="bf16"``) path is differentiable; FP8 plans are inference-only and
raise on backward. On the Triton backend the backward is two Triton kernels (FlashAttention-2 style: dQ per
query block over its key list; dK, dV per key block over the transposed list, so no atomics), fed by the
output and the base-2 row log-sum-exp the op returns next to it. On the reference backend the backward is
PyTorch autograd through the reference.

Measured error of the FP8 path (CPU, ``TRITON_INTERPRET=1``; errors against fp32 attention with the same block
mask, relative L1 = sum|out - ref| / sum|ref|):

- i.i.d. Gaussian Q, K, V with a per-channel key bias (nearly uniform attention, the hard case; the inputs of
  ``tests/test_sparse_fp8_attention.py``, head dim 24 and 48-64): relative L1 0.044-0.053, cosine
  0.99850-0.99898 (per-tile scales; per-head scales 0.048-0.051). The tests assert < 0.06 and > 0.998.
- Smooth synthetic fields (``benchmarks/attention.py --device cpu --small``): relative L1 0.004-0.009,
  cosine >= 0.99994.
- Triton kernel vs the PyTorch reference of the same plan: relative L1 3e-8 to 5e-8 (fp32 rounding; the tests
  assert < 1e-4).

``benchmarks/RESULTS.md`` has the tables and commands. GPU speed has not been measured.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .attention_schedule import QUANTS, AttentionPlan, AttentionSchedule
from .block_mask import (
    lists_to_mask,
    mask_to_lists,
    topk_block_mask,
    video_rows_mask,
    window_block_mask,
    window_tile_count,
)
from .sparse_attention_reference import quantize_qkv, reference_block_sparse_attention
from .tile_layout import make_tile_layout

BACKENDS = ("auto", "triton", "reference")
BACKEND_ENV = "VIDPOST_ATTENTION_BACKEND"
_OPTION_KEYS = {"tile", "schedule", "quant", "backend"}


# --------------------------------------------------------------------------------------------- custom op


def _pad_head_dim(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x if x.shape[-1] == dim else F.pad(x, (0, dim - x.shape[-1]))


def _triton_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    kv_len: torch.Tensor,
    block: int,
    dense_from: int,
    quant: str,
    granularity: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    from .sparse_attention_triton import triton_block_sparse_attention

    B, H, S, D = q.shape
    d_pad = max(16, 1 << (D - 1).bit_length())
    scale = D**-0.5
    # Zero channels change no dot product, no per-block amax and no code of the real channels.
    q, k, v = (_pad_head_dim(x, d_pad) for x in (q, k, v))
    if quant == "fp8":
        qq = quantize_qkv(q, k, v, kv_len, block, granularity)
        operands = (qq.q8, qq.k8, qq.v8)
        scales = {"q_scale": qq.q_scale_BHM, "k_scale": qq.k_scale_BHM, "v_scale": qq.v_scale_BHD}
    else:
        operands, scales = (q, k, v), {}
    lse = torch.empty(B, H, S, device=q.device, dtype=torch.float32)
    out = triton_block_sparse_attention(
        *operands, kv_index, kv_count, kv_len, block, dense_from, q.dtype, sm_scale=scale, lse=lse, **scales
    )
    return out[..., :D], lse


@torch.library.custom_op("vidpost::block_sparse_attention", mutates_args=())
def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_index: torch.Tensor,
    kv_count: torch.Tensor,
    kv_len: torch.Tensor,
    block: int,
    dense_from: int,
    quant: str,
    granularity: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention on blocked operands [B, H, S, D] (``S = len(kv_len) * block``).

    Returns the output [B, H, S, D] and the fp32 base-2 row log-sum-exp [B, H, S] (kept for the backward pass;
    not differentiable).

    ``kv_index`` int32 [B|1, H|1, dense_from, L] / ``kv_count`` int32 [B|1, H|1, dense_from]: the key blocks of
    the query blocks before ``dense_from``; the later query blocks attend to every block (``dense_from = 0``:
    dense attention). ``backend``: "triton" or "reference".
    """
    if backend == "triton":
        return _triton_forward(q, k, v, kv_index, kv_count, kv_len, block, dense_from, quant, granularity)
    return reference_block_sparse_attention(
        q, k, v, kv_index, kv_count, kv_len, block, dense_from, quant, granularity, return_lse=True
    )


@block_sparse_attention.register_fake
def _(q, k, v, kv_index, kv_count, kv_len, block, dense_from, quant, granularity, backend):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    q, k, v, kv_index, kv_count, kv_len, block, dense_from, quant, granularity, backend = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, kv_index, kv_count, kv_len, out, lse)
    ctx.block, ctx.dense_from, ctx.quant, ctx.backend = block, dense_from, quant, backend


def _triton_backward(q, k, v, out, lse, grad_out, kv_index, kv_count, kv_len, block, dense_from):
    from .sparse_attention_triton import triton_block_sparse_attention_backward

    B, H, S, D = q.shape
    d_pad = max(16, 1 << (D - 1).bit_length())
    scale = D**-0.5
    q, k, v, out, grad_out = (_pad_head_dim(x, d_pad) for x in (q, k, v, out, grad_out))
    q_index = q_count = None
    if dense_from > 0:
        num_blocks = S // block
        listed = lists_to_mask(kv_index[:, :, :dense_from], kv_count[:, :, :dense_from], num_blocks)
        dense_rows = torch.ones(*listed.shape[:2], num_blocks - dense_from, num_blocks, dtype=torch.bool)
        full = torch.cat([listed, dense_rows.to(listed.device)], dim=2)
        q_index, q_count = mask_to_lists(full.transpose(-1, -2))
    grads = triton_block_sparse_attention_backward(
        q, k, v, out, lse, grad_out, kv_index, kv_count, q_index, q_count, kv_len, block, dense_from, scale
    )
    return tuple(g[..., :D] for g in grads)


def _backward(ctx, grad_out, grad_lse):
    if ctx.quant == "fp8":
        raise RuntimeError("FP8 block-sparse attention is inference-only; use quant='bf16' to train through it")
    q, k, v, kv_index, kv_count, kv_len, out, lse = ctx.saved_tensors
    if ctx.backend == "triton":
        dq, dk, dv = _triton_backward(
            q, k, v, out, lse, grad_out, kv_index, kv_count, kv_len, ctx.block, ctx.dense_from
        )
    else:
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
            out = reference_block_sparse_attention(*leaves, kv_index, kv_count, kv_len, ctx.block, ctx.dense_from)
            dq, dk, dv = torch.autograd.grad(out, leaves, grad_out)
    return dq, dk, dv, None, None, None, None, None, None, None, None


block_sparse_attention.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------- BSHD entry


def _static_list_len(plan: AttentionPlan, layout, num_text_blocks: int) -> int:
    """Upper bound on selected key blocks per query block (static, so list shapes do not depend on data)."""
    M = layout.num_tiles
    video = 0
    if plan.window is not None:
        video += window_tile_count(layout, plan.window)
    if plan.topk is not None:
        video += min(plan.topk, M)
    return min(M, video + 1) + num_text_blocks  # +1: the diagonal


def block_sparse_attention_BSHD(
    query_BSHD: torch.Tensor,
    key_BSHD: torch.Tensor,
    value_BSHD: torch.Tensor,
    grid: tuple[int, int, int],
    num_video_tokens: int,
    tile: tuple[int, int, int],
    plan: AttentionPlan,
    backend: str,
) -> torch.Tensor:
    """Joint self-attention [B, S, H, D] with ``num_video_tokens`` video tokens on ``grid`` then text tokens.

    ``backend="triton"`` falls back to the reference for CPU tensors unless ``TRITON_INTERPRET=1``.
    """
    if not (query_BSHD.shape == key_BSHD.shape == value_BSHD.shape) or query_BSHD.dim() != 4:
        raise ValueError(
            "query, key and value must have one shape [B, S, H, D] (joint self-attention), got "
            f"{tuple(query_BSHD.shape)}, {tuple(key_BSHD.shape)}, {tuple(value_BSHD.shape)}"
        )
    if backend not in ("triton", "reference"):
        raise ValueError(f"backend must be 'triton' or 'reference', got {backend!r}")
    if backend == "triton" and not query_BSHD.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        backend = "reference"  # CPU tensors and no interpreter: the kernel cannot run, the reference can
    B, S, H, D = query_BSHD.shape
    if len(grid) != 3:
        raise ValueError(f"grid must be (T, H, W), got {grid!r}")
    grid = (int(grid[0]), int(grid[1]), int(grid[2]))
    if grid[0] * grid[1] * grid[2] != num_video_tokens or not 0 < num_video_tokens <= S:
        raise ValueError(
            f"grid {grid} must hold num_video_tokens={num_video_tokens} tokens, at most the sequence length {S}"
        )
    layout = make_tile_layout(grid, tuple(tile))
    block, M = layout.block, layout.num_tiles
    num_text = S - num_video_tokens
    num_text_blocks = -(-num_text // block)
    device = query_BSHD.device

    def blocked(x_BSHD: torch.Tensor) -> torch.Tensor:
        parts = [layout.to_tiles(x_BSHD[:, :num_video_tokens])]
        if num_text:
            parts.append(F.pad(x_BSHD[:, num_video_tokens:], (0, 0, 0, 0, 0, num_text_blocks * block - num_text)))
        return torch.cat(parts, dim=1).transpose(1, 2)  # [B, H, S_pad, D]

    q, k, v = blocked(query_BSHD), blocked(key_BSHD), blocked(value_BSHD)
    text_len = [min(block, num_text - i * block) for i in range(num_text_blocks)]
    kv_len = layout.cached(
        ("kv_len", num_text, str(device)),
        lambda: torch.cat([layout.valid_len_M, torch.tensor(text_len, dtype=torch.int32)]).to(device),
    )

    if plan.dense:
        dense_from = 0
        kv_index = torch.zeros(1, 1, 0, 1, dtype=torch.int32, device=device)
        kv_count = torch.zeros(1, 1, 0, dtype=torch.int32, device=device)
    else:
        dense_from = M
        video_mask = torch.zeros(1, 1, M, M, dtype=torch.bool, device=device)
        if plan.window is not None:
            window = layout.cached(
                ("window", plan.window, str(device)), lambda: window_block_mask(layout, plan.window).to(device)
            )
            video_mask = video_mask | window
        if plan.topk is not None:
            video_mask = video_mask | topk_block_mask(q, k, layout, plan.topk)
        mask = video_rows_mask(video_mask, num_text_blocks)
        kv_index, kv_count = mask_to_lists(mask, _static_list_len(plan, layout, num_text_blocks))

    out, _ = torch.ops.vidpost.block_sparse_attention(
        q, k, v, kv_index, kv_count, kv_len, block, dense_from, plan.quant, plan.granularity, backend
    )
    out = out.transpose(1, 2)  # [B, S_pad, H, D]
    video = layout.from_tiles(out[:, : layout.num_slots])
    if not num_text:
        return video
    return torch.cat([video, out[:, layout.num_slots : layout.num_slots + num_text]], dim=1)


# --------------------------------------------------------------------------------------------- factory


@dataclass(frozen=True)
class SparseAttentionOptions:
    """Options of :func:`make_fp8_sparse_attention` (parsed from a plain dict)."""

    tile: tuple[int, int, int] = (2, 4, 4)
    """Tile shape (Tt, Th, Tw) in latent positions; a block holds the next power of two >= 16 of the product."""
    schedule: AttentionSchedule = AttentionSchedule()
    """Per-step / per-layer plans; the default schedule is dense everywhere."""
    quant: str = "fp8"
    """Default quantisation of the schedule's plans: "fp8" or "bf16" (none)."""
    backend: str = "auto"
    """"auto" | "triton" | "reference"; overridden by the VIDPOST_ATTENTION_BACKEND environment variable."""

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> SparseAttentionOptions:
        if not isinstance(options, dict):
            raise ValueError(f"options must be a mapping, got {type(options).__name__}")
        unknown = set(options) - _OPTION_KEYS
        if unknown:
            raise ValueError(f"unknown attention option(s) {sorted(unknown)}; allowed {sorted(_OPTION_KEYS)}")
        tile = options.get("tile", cls.tile)
        if not isinstance(tile, (list, tuple)) or len(tile) != 3:
            raise ValueError(f"tile must be three positive integers [t, h, w], got {tile!r}")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in tile):
            raise ValueError(f"tile must be three positive integers [t, h, w], got {tile!r}")
        quant = options.get("quant", "fp8")
        if quant not in QUANTS:
            raise ValueError(f"quant must be one of {QUANTS}, got {quant!r}")
        backend = options.get("backend", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        schedule = AttentionSchedule.from_dict(options.get("schedule"), quant=quant)
        return cls(tile=tuple(tile), schedule=schedule, quant=quant, backend=backend)


def resolve_backend(requested: str = "auto") -> str:
    """ "triton" or "reference": the environment override, else ``requested``; "auto" = triton iff CUDA."""
    choice = os.environ.get(BACKEND_ENV) or requested
    if choice not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}/backend must be one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        choice = "triton" if torch.cuda.is_available() else "reference"
    if choice == "triton":
        from .sparse_attention_triton import interpreting

        if not (torch.cuda.is_available() or interpreting()):
            raise ValueError("the triton attention backend needs a CUDA device (or TRITON_INTERPRET=1 on the CPU)")
    return choice


def make_fp8_sparse_attention(options: dict[str, Any]) -> Callable[..., torch.Tensor]:
    """Build ``fn(query_BSHD, key_BSHD, value_BSHD, ctx) -> out_BSHD`` (module docstring).

    ``options = {"tile": [2, 4, 4], "schedule": {...}, "quant": "fp8" | "bf16", "backend": "auto" | "triton" |
    "reference"}``. ``ctx`` needs ``grid``, ``num_video_tokens``, ``step``, ``num_steps`` and ``layer``
    (``sigma`` is not used). The chosen backend is ``fn.backend``.
    """
    opts = SparseAttentionOptions.from_dict(options)
    backend = resolve_backend(opts.backend)

    def fp8_sparse_attention(
        query_BSHD: torch.Tensor, key_BSHD: torch.Tensor, value_BSHD: torch.Tensor, ctx: Any
    ) -> torch.Tensor:
        plan = opts.schedule.plan(ctx.step, ctx.num_steps, ctx.layer)
        return block_sparse_attention_BSHD(
            query_BSHD, key_BSHD, value_BSHD, ctx.grid, ctx.num_video_tokens, opts.tile, plan, backend
        )

    fp8_sparse_attention.backend = backend
    fp8_sparse_attention.options = opts
    return fp8_sparse_attention
