"""Ahead-of-time compilation of the block-sparse attention kernel for Hopper (sm90), without a GPU.

Runs in a fresh process without ``TRITON_INTERPRET`` (the interpreter tests compile the kernel for the CPU
interpreter). Checks that the FP8 variant lowers both products to FP8 (e4m3) warpgroup MMAs, the bf16 variant to
bf16 warpgroup MMAs, and that neither spills registers at the Hopper block shape (128 x 128, head dim 128,
8 warps); the backward kernels compile too (dQ without spills, dK/dV with at most 64 bytes of stack) — a
compile-level check only; GPU speed is measured by ``benchmarks/attention.py`` on a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = r"""
import json, os, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from vidpost.kernels.sparse_attention_triton import _block_sparse_attn_fwd

fn = _block_sparse_attn_fwd.fn  # under the autotuner
results = {}
for fp8 in (True, False):
    op = "*fp8e4nv" if fp8 else "*bf16"
    sig = {"Q": op, "K": op, "V": op, "Out": "*bf16", "Lse": "*fp32", "QScale": "*fp32", "KScale": "*fp32", "VScale": "*fp32",
           "KvIndex": "*i32", "KvCount": "*i32", "KvLen": "*i32", "seq_len": "i32", "num_blocks": "i32",
           "dense_from": "i32", "list_len": "i32", "sm_scale_log2": "fp32"}
    consts = {"HEAD_DIM": 128, "BLOCK": 128, "FP8": fp8, "DENSE": False, "UPCAST": False, "P_SCALE": 448.0,
              "V_TRANSPOSED": fp8, "STORE_LSE": True}
    sig.update({name: "constexpr" for name in consts})
    names = list(sig)
    aligned = ("Q", "K", "V", "Out", "QScale", "KScale", "VScale", "KvIndex", "KvCount", "KvLen", "seq_len")
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "num_stages": 3})
    ptx = kernel.asm["ptx"]
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    results["fp8" if fp8 else "bf16"] = {
        "wgmma": ptx.count("wgmma.mma_async"),
        "wgmma_e4m3": sum("wgmma.mma_async" in line and "e4m3" in line for line in ptx.splitlines()),
        "usage": usage,
    }

from vidpost.kernels.sparse_attention_triton import _block_sparse_attn_bwd_dkdv, _block_sparse_attn_bwd_dq

for name, kern, ptrs, ints, extra in [
    ("dq", _block_sparse_attn_bwd_dq, ["Q", "K", "V", "dO", "Lse", "Delta", "dQ", "KvIndex", "KvCount", "KvLen"],
     ["seq_len", "num_blocks", "dense_from", "list_len"], {}),
    ("dkdv", _block_sparse_attn_bwd_dkdv,
     ["Q", "K", "V", "dO", "Lse", "Delta", "dK", "dV", "QIndex", "QCount", "KvLen"],
     ["seq_len", "num_blocks", "list_len"], {"SUB_M": 32}),
]:
    ints32 = ("KvIndex", "KvCount", "KvLen", "QIndex", "QCount")
    sig = {p: "*fp32" if p in ("Lse", "Delta") else "*i32" if p in ints32 else "*bf16" for p in ptrs}
    sig.update({i: "i32" for i in ints})
    sig["sm_scale"] = "fp32"
    consts = {"HEAD_DIM": 128, "BLOCK": 128, "DENSE": False, "UPCAST": False, **extra}
    sig.update({c: "constexpr" for c in consts})
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ptrs + ["seq_len"]}
    kernel = triton.compile(ASTSource(fn=kern.fn, signature=sig, constexprs=consts, attrs=attrs),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "num_stages": 2})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    results[name] = {"usage": usage}
print(json.dumps(results))
"""


@pytest.mark.skipif(
    not os.path.exists(os.path.join(os.path.dirname(__import__("triton").__file__), "backends", "nvidia")),
    reason="Triton without its NVIDIA backend",
)
def test_kernels_compile_for_sm90_with_fp8_wgmma_and_no_spills():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    fp8, bf16 = results["fp8"], results["bf16"]
    assert fp8["wgmma"] > 0 and fp8["wgmma_e4m3"] == fp8["wgmma"]  # Q·Kᵀ and P·V both in FP8
    assert bf16["wgmma"] > 0 and bf16["wgmma_e4m3"] == 0
    for variant in (fp8, bf16, results["dq"]):
        assert "STACK:0 " in variant["usage"] and "LOCAL:0 " in variant["usage"], variant["usage"]
    # dK/dV holds four 128 x 128 tiles (K, V, dK, dV); with 32-row query slices it spills at most a few words.
    stack = int(results["dkdv"]["usage"].split("STACK:")[1].split()[0])
    assert stack <= 64, results["dkdv"]["usage"]
