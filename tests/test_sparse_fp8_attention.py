"""FP8 + block-sparse attention: reference vs SDPA, Triton kernel (CPU interpreter) vs reference, error bounds,
custom op under torch.compile, backward of the unquantised path, backend selection, schedule wiring."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton compiles anything: the kernel runs on the CPU interpreter

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from vidpost.kernels.attention_schedule import AttentionPlan
from vidpost.kernels.block_mask import mask_to_lists, topk_block_mask, video_rows_mask, window_block_mask
from vidpost.kernels.sparse_attention_reference import (
    FP8_MAX,
    quantize_qkv,
    reference_block_sparse_attention,
    slot_valid,
)
from vidpost.kernels.sparse_attention_triton import _round_to_e4m3, triton_block_sparse_attention
from vidpost.kernels.sparse_fp8_attention import (
    BACKEND_ENV,
    block_sparse_attention_BSHD,
    make_fp8_sparse_attention,
    resolve_backend,
)
from vidpost.kernels.tile_layout import make_tile_layout

GRID, TILE, TEXT = (3, 5, 6), (2, 2, 2), 5  # 90 video tokens in 2x3x3 tiles of 8 (16 slots), 5 text tokens
WINDOW_TOPK = AttentionPlan(dense=False, window=(0, 1, 0), topk=2)


def _inputs(grid=GRID, text=TEXT, heads=2, dim=24, dtype=torch.float32, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    S = grid[0] * grid[1] * grid[2] + text
    q, k, v = (torch.randn(batch, S, heads, dim, generator=g) for _ in range(3))
    k = k + 2.0 * torch.randn(dim, generator=g)  # a per-channel key bias, as real DiT keys have
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _ctx(grid=GRID, text=TEXT, step=None, num_steps=None, layer=0):
    n = grid[0] * grid[1] * grid[2]
    return SimpleNamespace(grid=grid, num_video_tokens=n, step=step, num_steps=num_steps, sigma=None, layer=layer)


def _token_mask(plan, q, k, grid=GRID, tile=TILE, text=TEXT):
    """Frame-major [B|1, H|1, S, S] mask of a plan, expanded from the tile masks by token coordinates."""
    layout = make_tile_layout(grid, tile)
    T, H, W = grid
    S = q.shape[1]
    if plan.dense:
        return torch.ones(1, 1, S, S, dtype=torch.bool)
    M = layout.num_tiles
    tiles = torch.zeros(1, 1, M, M, dtype=torch.bool)
    if plan.window is not None:
        tiles = tiles | window_block_mask(layout, plan.window)
    if plan.topk is not None:
        qt, kt = (layout.to_tiles(x[:, : T * H * W]).transpose(1, 2) for x in (q, k))
        tiles = tiles | topk_block_mask(qt, kt, layout, plan.topk)
    tiles = tiles | torch.eye(M, dtype=torch.bool)
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    nt, nh, nw = layout.tiles_per_dim
    tile_of = ((t // tile[0]) * nh * nw + (h // tile[1]) * nw + w // tile[2]).reshape(-1)
    video = tiles[:, :, tile_of][:, :, :, tile_of]
    mask = torch.ones(*video.shape[:2], S, S, dtype=torch.bool)
    mask[:, :, : T * H * W, : T * H * W] = video
    return mask


def _masked_sdpa(q, k, v, mask):
    out = F.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


def _errors(out, ref):
    out, ref = out.double().flatten(), ref.double().flatten()
    rel_l1 = float((out - ref).abs().sum() / ref.abs().sum())
    return rel_l1, float(F.cosine_similarity(out, ref, dim=0))


# ------------------------------------------------------------------------------------------ reference path


@pytest.mark.parametrize("text", [0, TEXT])
def test_reference_dense_unquantised_is_sdpa(text):
    q, k, v = _inputs(text=text)
    fn = make_fp8_sparse_attention({"tile": list(TILE), "quant": "bf16", "backend": "reference"})
    out = fn(q, k, v, _ctx(text=text))
    torch.testing.assert_close(out, _masked_sdpa(q, k, v, None), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "plan", [AttentionPlan(dense=False, window=(1, 0, 1)), WINDOW_TOPK, AttentionPlan(dense=False, topk=1)]
)
def test_reference_sparse_unquantised_is_masked_sdpa(plan):
    q, k, v = _inputs()
    plan = AttentionPlan(dense=False, window=plan.window, topk=plan.topk, quant="bf16")
    out = block_sparse_attention_BSHD(q, k, v, GRID, 90, TILE, plan, "reference")
    mask = _token_mask(plan, q, k)
    assert 0.1 < mask[:, :, :90, :90].float().mean() < 0.9  # the plan really is sparse
    torch.testing.assert_close(out, _masked_sdpa(q, k, v, mask), atol=2e-6, rtol=1e-5)


def test_fp8_quantisation_is_exact_emulation():
    q, k, v = _inputs(text=0)
    layout = make_tile_layout(GRID, TILE)
    qt, kt, vt = (layout.to_tiles(x).transpose(1, 2) for x in (q, k, v))
    kv_len, block = layout.valid_len_M, layout.block
    qq = quantize_qkv(qt, kt, vt, kv_len, block)
    # Q: one scale per (head, tile) = amax / 448, codes = fp8(q / scale).
    blk = qt[0, 1, 3 * block : 4 * block]
    scale = blk.abs().amax() / FP8_MAX
    assert torch.equal(qq.q_scale_BHM[0, 1, 3], scale)
    assert torch.equal(qq.q8[0, 1, 3 * block : 4 * block].float(), (blk / scale).to(torch.float8_e4m3fn).float())
    # granularity "head": one scale per head over all tokens.
    per_head = quantize_qkv(qt, kt, vt, kv_len, block, "head")
    assert torch.equal(per_head.q_scale_BHM, (qt.abs().amax(dim=(2, 3)) / FP8_MAX)[..., None].expand(1, 2, 18))
    # K is smoothed: the mean over real tokens is removed; a constant key offset leaves the codes unchanged.
    valid = slot_valid(kv_len, block)
    k_deq = qq.k8.float() * qq.k_scale_BHM.repeat_interleave(block, -1)[..., None]
    centred = (kt - kt[:, :, valid].mean(2, keepdim=True)) * valid[:, None]
    assert _errors(k_deq, centred)[0] < 0.03
    shifted = quantize_qkv(qt, kt + 50.0 * torch.randn(kt.shape[-1]), vt, kv_len, block)
    assert _errors(shifted.k8.float(), qq.k8.float())[0] < 1e-3
    # V: one scale per channel; dequantised V within e4m3 precision (3 mantissa bits).
    v_deq = qq.v8.float() * qq.v_scale_BHD[:, :, None, :]
    assert torch.all((v_deq - vt).abs() <= vt.abs() * 2**-4 + qq.v_scale_BHD[:, :, None, :] * 2**-9)


# ------------------------------------------------------------------------------------------ Triton vs reference


def _run(backend, plan, q, k, v):
    return block_sparse_attention_BSHD(q, k, v, GRID, 90, TILE, plan, backend)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("quant", ["bf16", "fp8"])
def test_triton_matches_reference_fp32_inputs(quant, sparse):
    q, k, v = _inputs(batch=2 if sparse else 1)  # batch 2: per-(batch, head) top-k lists
    plan = AttentionPlan(
        dense=not sparse, window=(0, 1, 0) if sparse else None, topk=2 if sparse else None, quant=quant
    )
    out = _run("triton", plan, q, k, v)
    ref = _run("reference", plan, q, k, v)
    exact = _masked_sdpa(q, k, v, _token_mask(plan, q, k))
    if quant == "bf16":
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, exact, atol=1e-5, rtol=1e-5)
    else:
        # Same quantised operands and order of operations: equal up to fp32 rounding (and a rare flipped P code).
        rel_l1, cos = _errors(out, ref)
        assert rel_l1 < 1e-4 and cos > 0.999999, (rel_l1, cos)
        for got in (out, ref):  # documented error bounds of the FP8 path vs exact attention with the same mask
            rel_l1, cos = _errors(got, exact)
            assert rel_l1 < 0.06 and cos > 0.998, (rel_l1, cos)


@triton.jit
def _round_kernel(X, Y, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(Y + offs, _round_to_e4m3(tl.load(X + offs)))


def test_interpreter_fp8_cast_emulation_is_exact():
    g = torch.Generator().manual_seed(0)
    codes = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # all finite e4m3 >= 0
    midpoints = (codes[1:] + codes[:-1]) / 2  # exact ties: round half to even
    x = torch.cat([codes, midpoints, torch.rand(1024 - 2 * 127 + 1, generator=g) * 448])
    y = torch.empty_like(x)
    _round_kernel[(1,)](x, y, N=1024)
    assert torch.equal(y, x.to(torch.float8_e4m3fn).float())


def test_triton_bf16_inputs_sparse():
    q, k, v = _inputs(dtype=torch.bfloat16, seed=1)
    plan = AttentionPlan(dense=False, window=(1, 0, 1), topk=1, quant="bf16")
    out = _run("triton", plan, q, k, v)
    ref = _run("reference", plan, q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=1.6e-2, rtol=1.6e-2)
    rel_l1, cos = _errors(out, _masked_sdpa(q, k, v, _token_mask(plan, q, k)))
    assert rel_l1 < 0.01 and cos > 0.9999, (rel_l1, cos)


def test_triton_writes_every_element_and_masks_padding():
    torch.manual_seed(0)
    layout = make_tile_layout((3, 3, 3), (2, 2, 2))  # 8 tiles, most of them partly padding
    block, M = layout.block, layout.num_tiles
    kv_len = torch.cat([layout.valid_len_M, torch.tensor([3], dtype=torch.int32)])  # + one text block of 3
    S = (M + 1) * block
    q, k, v = (torch.randn(1, 2, S, 16) for _ in range(3))
    pad = ~slot_valid(kv_len, block)
    k_dirty, v_dirty = k.clone(), v.clone()
    k_dirty[:, :, pad], v_dirty[:, :, pad] = 1e4, -1e4  # padded keys get -inf scores, so P = 0 on them
    mask = video_rows_mask(window_block_mask(layout, (0, 0, 1))[None, None], 1)
    kv_index, kv_count = mask_to_lists(mask)
    out, lse = torch.full((1, 2, S, 16), float("nan")), torch.full((1, 2, S), float("nan"))
    triton_block_sparse_attention(
        q, k_dirty, v_dirty, kv_index, kv_count, kv_len, block, M, torch.float32, out=out, lse=lse
    )
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    ref, ref_lse = reference_block_sparse_attention(q, k, v, kv_index, kv_count, kv_len, block, M, return_lse=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ op, autograd, wiring


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_custom_op_compiles_fullgraph():
    q, k, v = _inputs()
    fn = make_fp8_sparse_attention(
        {"tile": list(TILE), "backend": "reference", "schedule": {"default": {"window": [0, 1, 0], "topk": 2}}}
    )
    ctx = _ctx()
    compiled = torch.compile(lambda a, b, c: fn(a, b, c, ctx), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), fn(q, k, v, ctx), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "backend,sparse,dim,grid",
    [("reference", True, 16, GRID), ("triton", True, 16, GRID), ("triton", False, 24, (2, 3, 4))],
)
def test_backward_unquantised_matches_autograd(backend, sparse, dim, grid):
    q, k, v = _inputs(grid=grid, dim=dim, seed=2)
    plan = AttentionPlan(quant="bf16")
    if sparse:
        plan = AttentionPlan(dense=False, window=(0, 1, 0), topk=2, quant="bf16")
    mask = _token_mask(plan, q, k, grid=grid)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(3))
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    n = grid[0] * grid[1] * grid[2]
    (block_sparse_attention_BSHD(*leaves, grid, n, TILE, plan, backend) * grad).sum().backward()
    expected = [x.clone().requires_grad_(True) for x in (q, k, v)]
    (_masked_sdpa(*expected, mask) * grad).sum().backward()
    for got, want in zip(leaves, expected):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-4)


def test_triton_backward_bf16_inputs_two_row_slices():
    q, k, v = _inputs(dim=16, dtype=torch.bfloat16, seed=4)
    plan = AttentionPlan(dense=False, window=(1, 0, 0), topk=1, quant="bf16")
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    grads = {}
    for backend in ("triton", "reference"):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        out = block_sparse_attention_BSHD(*leaves, GRID, 90, (2, 4, 4), plan, backend)  # 32-slot blocks
        (out.float() * grad.float()).sum().backward()
        grads[backend] = [x.grad for x in leaves]
    for got, want in zip(grads["triton"], grads["reference"]):
        assert got.dtype == torch.bfloat16
        rel_l1, cos = _errors(got, want)
        assert rel_l1 < 0.02 and cos > 0.9995, (rel_l1, cos)


def test_fp8_backward_raises():
    q, k, v = (x.requires_grad_(True) for x in _inputs())
    out = block_sparse_attention_BSHD(q, k, v, GRID, 90, TILE, AttentionPlan(quant="fp8"), "reference")
    with pytest.raises(RuntimeError, match="inference-only"):
        out.sum().backward()


def test_schedule_drives_the_plan():
    q, k, v = _inputs()
    schedule = {"rules": [{"steps": [0.0, 0.5], "dense": True}, {"steps": [0.5, 1.0], "window": [0, 1, 0]}]}
    fn = make_fp8_sparse_attention({"tile": list(TILE), "quant": "bf16", "backend": "reference", "schedule": schedule})
    dense = _masked_sdpa(q, k, v, None)
    sparse = _masked_sdpa(q, k, v, _token_mask(AttentionPlan(dense=False, window=(0, 1, 0)), q, k))
    torch.testing.assert_close(fn(q, k, v, _ctx(step=1, num_steps=4)), dense, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(fn(q, k, v, _ctx(step=2, num_steps=4)), sparse, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(fn(q, k, v, _ctx(step=2, num_steps=None)), dense, atol=2e-6, rtol=1e-5)
    assert _errors(dense, sparse)[0] > 0.05


def test_backend_selection(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    if not torch.cuda.is_available():
        assert resolve_backend("auto") == "reference"
        assert make_fp8_sparse_attention({}).backend == "reference"
    monkeypatch.setenv(BACKEND_ENV, "triton")
    forced = make_fp8_sparse_attention({"backend": "reference", "tile": [1, 2, 2]})
    assert forced.backend == "triton"
    q, k, v = _inputs(grid=(2, 2, 4), text=0, dim=16)
    ctx = _ctx(grid=(2, 2, 4), text=0)
    monkeypatch.delenv(BACKEND_ENV)
    reference = make_fp8_sparse_attention({"backend": "reference", "tile": [1, 2, 2]})
    assert reference.backend == "reference"
    torch.testing.assert_close(forced(q, k, v, ctx), reference(q, k, v, ctx), atol=1e-6, rtol=1e-5)
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        resolve_backend()
    monkeypatch.delenv(BACKEND_ENV)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_backend("triton")
    # CPU tensors without the interpreter: the Triton backend falls back to the reference.
    import vidpost.kernels.sparse_fp8_attention as module

    def no_kernel(*args, **kwargs):
        raise AssertionError("the Triton kernel must not run on CPU tensors without TRITON_INTERPRET=1")

    monkeypatch.setattr(module, "_triton_forward", no_kernel)
    torch.testing.assert_close(forced(q, k, v, ctx), reference(q, k, v, ctx), atol=0, rtol=0)


def test_bad_shapes_raise():
    q, k, v = _inputs()
    fn = make_fp8_sparse_attention({"tile": list(TILE), "backend": "reference"})
    with pytest.raises(ValueError, match="grid"):
        fn(q, k, v, SimpleNamespace(grid=(3, 5, 7), num_video_tokens=105, step=None, num_steps=None, layer=0))
    with pytest.raises(ValueError, match="one shape"):
        fn(q, k[:, :10], v[:, :10], _ctx())


_GPU_SCRIPT = """
import torch
from vidpost.kernels.attention_schedule import AttentionPlan
from vidpost.kernels.sparse_fp8_attention import block_sparse_attention_BSHD
grid, text, quant = (5, 12, 20), 40, {quant!r}
g = torch.Generator().manual_seed(0)
S = 5 * 12 * 20 + text
q, k, v = (torch.randn(2, S, 4, 128, generator=g).to("cuda", torch.bfloat16) for _ in range(3))
plan = AttentionPlan(dense=False, window=(1, 1, 1), topk=4, quant=quant)
out = block_sparse_attention_BSHD(q, k, v, grid, S - text, (2, 4, 4), plan, "triton").double()
ref = block_sparse_attention_BSHD(q, k, v, grid, S - text, (2, 4, 4), plan, "reference").double()
rel_l1 = float((out - ref).abs().sum() / ref.abs().sum())
cos = float(torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0))
assert rel_l1 < 0.02 and cos > 0.999, (rel_l1, cos)
print(quant, rel_l1, cos)
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("quant", ["bf16", "fp8"])
def test_triton_matches_reference_on_gpu(quant):
    # A fresh process: this module compiled the kernel for the CPU interpreter.
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", _GPU_SCRIPT.format(quant=quant)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
