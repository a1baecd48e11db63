"""Attention processors that carry the video context, a registry of attention implementations, Enhance-A-Video.

Diffusers' attention backends see only Q, K and V. Video-aware methods also need the latent token grid, the
denoising step / sigma, the layer index and the classifier-free-guidance branch. This module replaces the
processors of the video self-attention layers with processors that compute Q, K, V exactly as the stock ones
do, then call an *implementation*

    impl(query_BSHD, key_BSHD, value_BSHD, ctx: AttentionContext) -> out_BSHD

on the post-norm, post-RoPE Q and K. Where the context comes from:
- `adapter.attention_state` (an `AttentionState`, one per adapter, shared by all its processors): the adapter's
  `forward_transformer` sets `grid` = latent shape // patch size, `predict_velocity` sets `cfg_branch`
  ("cond" / "uncond") around its passes, and `sampling.denoise` sets step / num_steps / sigma per step;
- the processor adds its layer index, the number of video tokens and the attention mask (HunyuanVideo).

Layers. Wan: `blocks[i].attn1` is layer i (the cross-attention `attn2` keeps its stock processor).
HunyuanVideo: dual-stream `transformer_blocks[i].attn` is layer i, single-stream
`single_transformer_blocks[j].attn` is layer n_dual + j; both attend jointly over [video tokens; text tokens]
(video first, `ctx.num_video_tokens` of them) with the text padding mask in `ctx.attention_mask`.
A Wan2.2 `transformer_2` gets the same processors (same layer indices).

Implementations are registered by name (`register_attention`); a factory `factory(attn_module, layer, options)`
builds one per selected layer at install time (the choice is made once, there). A factory may return an
`nn.Module`; the processor (itself an `nn.Module` registered under the attention module) holds it as the
submodule `impl`, so its parameters are in `transformer.parameters()` and its state dict. Built in:
- "sdpa": `F.scaled_dot_product_attention` (what diffusers' native backend computes; the reference);
- "flash": `flash_attn.flash_attn_func` for CUDA fp16/bf16 inputs without a mask when `flash_attn` imports,
  SDPA otherwise.
An implementation whose `available()` is false at install time falls back to "sdpa" (with a warning).
`force_reference()` (context manager) or `VIDPOST_ATTENTION_REFERENCE=1` asks factories for their reference
path (`prefer_reference()`); "flash" then installs SDPA, and Enhance-A-Video uses the reference CFI.

Enhance-A-Video, "eav" in names (`EavConfig`, maths in `vidpost.kernels.eav`): for every selected
layer, step and branch the processor computes the per-sample cross-frame intensity of the video tokens' Q and
K over the F latent frames and multiplies the attention branch output by g = max(1, (F + w)·CFI), after the
output projection (Wan, HunyuanVideo dual-stream: video tokens only). Departures: HunyuanVideo's single-stream
blocks have no output projection inside attention (their `proj_out` mixes attention and MLP), so there the
video tokens' attention output is scaled before `proj_out`; a weight of exactly 0 switches a layer off (g = 1)
rather than applying max(1, F·CFI); CFI is per sample (see the kernel module).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from vidpost.config import NonNegativeInt, renamed_keys

if TYPE_CHECKING:
    from .base import VideoModelAdapter

logger = logging.getLogger(__name__)

CFG_BRANCHES = ("cond", "uncond")
ENV_REFERENCE = "VIDPOST_ATTENTION_REFERENCE"


# ---- context -------------------------------------------------------------------------------------------------
@dataclass
class AttentionContext:
    """What an attention implementation sees besides Q, K, V."""

    grid: tuple[int, int, int] | None
    """(T, H, W) video-token grid, frame-major token order t·H·W + h·W + w; None when unknown (the transformer
    was called outside the adapter, or the grid does not match the number of video tokens)."""
    num_video_tokens: int
    """Video tokens come first; HunyuanVideo's joint attention appends the text tokens after them."""
    step: int | None
    num_steps: int | None
    sigma: float | None
    cfg_branch: str
    """"cond" or "uncond"."""
    layer: int
    attention_mask: torch.Tensor | None = None
    """Boolean mask broadcastable to [B, heads, S, S] (True = attend), or None (Wan)."""

    @property
    def num_frames(self) -> int | None:
        return None if self.grid is None else self.grid[0]


@dataclass
class AttentionState:
    """Mutable per-adapter state the sampling code fills and the processors read."""

    grid: tuple[int, int, int] | None = None
    step: int | None = None
    num_steps: int | None = None
    sigma: float | None = None
    cfg_branch: str = "cond"

    def set_step(self, step: int, num_steps: int, sigma: float) -> None:
        self.step, self.num_steps, self.sigma = step, num_steps, sigma

    def clear_step(self) -> None:
        self.step = self.num_steps = self.sigma = None

    @contextlib.contextmanager
    def branch(self, name: str) -> Iterator[None]:
        if name not in CFG_BRANCHES:
            raise ValueError(f"unknown CFG branch {name!r}; expected one of {CFG_BRANCHES}")
        old, self.cfg_branch = self.cfg_branch, name
        try:
            yield
        finally:
            self.cfg_branch = old


# ---- registry ------------------------------------------------------------------------------------------------
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionContext], torch.Tensor]
AttentionFactory = Callable[[torch.nn.Module, int, dict], AttentionFn]


@dataclass
class _Entry:
    factory: AttentionFactory
    available: Callable[[], bool] | None


_REGISTRY: dict[str, _Entry] = {}
_FORCE_REFERENCE: list[bool] = []


def register_attention(name: str, factory: AttentionFactory, *, available: Callable[[], bool] | None = None) -> None:
    """Register (or replace) the implementation `name`.

    factory(attn_module, layer_index, options) -> callable(q_BSHD, k_BSHD, v_BSHD, ctx) -> out_BSHD, built once
    per selected layer at install time; it may be an `nn.Module` (its parameters then train and save with the
    transformer). `available()` false at install time → that install uses "sdpa" instead."""
    if not name or not isinstance(name, str):
        raise ValueError(f"attention implementation name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = _Entry(factory, available)


def unregister_attention(name: str) -> None:
    if name in ("sdpa", "flash"):
        raise ValueError(f"the built-in attention implementation {name!r} cannot be unregistered")
    _REGISTRY.pop(name, None)


def registered_attention() -> list[str]:
    return sorted(_REGISTRY)


@contextlib.contextmanager
def force_reference(flag: bool = True) -> Iterator[None]:
    """Within the block, installs ask implementations for their reference path (see `prefer_reference`)."""
    _FORCE_REFERENCE.append(flag)
    try:
        yield
    finally:
        _FORCE_REFERENCE.pop()


def prefer_reference() -> bool:
    """True inside `force_reference()` or with $VIDPOST_ATTENTION_REFERENCE=1: factories build their reference."""
    if _FORCE_REFERENCE:
        return _FORCE_REFERENCE[-1]
    return os.environ.get(ENV_REFERENCE, "") not in ("", "0")


def _no_options(name: str, options: dict) -> None:
    if options:
        raise ValueError(
            f"attention implementation {name!r} takes no options; got unknown key '{next(iter(options))}'"
        )


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
    """Reference: `F.scaled_dot_product_attention` on [B, H, S, D] views, as diffusers' native backend."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=ctx.attention_mask
    )
    return out.transpose(1, 2)


def _sdpa_factory(attn: torch.nn.Module, layer: int, options: dict) -> AttentionFn:
    _no_options("sdpa", options)
    return sdpa_attention


def _flash_supported(q: torch.Tensor, ctx: AttentionContext) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and ctx.attention_mask is None


def _flash_factory(attn: torch.nn.Module, layer: int, options: dict) -> AttentionFn:
    _no_options("flash", options)
    if prefer_reference() or importlib.util.find_spec("flash_attn") is None:
        return sdpa_attention
    from flash_attn import flash_attn_func

    def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if _flash_supported(q, ctx):
            return flash_attn_func(q, k, v)
        return sdpa_attention(q, k, v, ctx)

    return flash_attention


register_attention("sdpa", _sdpa_factory)
register_attention("flash", _flash_factory, available=lambda: importlib.util.find_spec("flash_attn") is not None)


# ---- configuration -------------------------------------------------------------------------------------------
@dataclass
class EavConfig:
    """Enhance-A-Video settings (g = max(1, (F + w)·CFI) on the attention branch output)."""

    weight: float = 4.0
    """Enhance weight w (≈ 4 for Wan-14B / HunyuanVideo). 0 switches a layer off."""
    layers: list[int] | None = None
    """Layers to enhance (None = every video self-attention layer)."""
    layer_weights: dict[int, float] = field(default_factory=dict)
    """Per-layer weight overriding `weight` (0 turns that layer off)."""
    step_start: NonNegativeInt = 0
    """First denoising step (0-based) that is enhanced."""
    step_end: NonNegativeInt | None = None
    """Steps in [step_start, step_end) are enhanced (None = to the end). Steps outside `sample()` count as in range
    only when no range is set."""
    branches: list[str] = field(default_factory=lambda: list(CFG_BRANCHES))
    """CFG branches to enhance ("cond", "uncond"); e.g. ["cond"] leaves the negative-prompt pass untouched."""

    def __post_init__(self) -> None:
        bad = [b for b in self.branches if b not in CFG_BRANCHES]
        if bad:
            raise ValueError(f"eav.branches: unknown branch {bad[0]!r} (expected {list(CFG_BRANCHES)})")
        if self.step_start < 0 or (self.step_end is not None and self.step_end < self.step_start):
            raise ValueError(
                f"eav step range [{self.step_start}, {self.step_end}) is invalid (need 0 <= start <= end)"
            )

    def weight_for(self, layer: int, step: int | None, branch: str) -> float | None:
        """The weight to apply at (layer, step, branch), or None when Enhance-A-Video is off there."""
        if self.layers is not None and layer not in self.layers:
            return None
        if branch not in self.branches:
            return None
        if step is None:
            if self.step_start != 0 or self.step_end is not None:
                return None
        elif step < self.step_start or (self.step_end is not None and step >= self.step_end):
            return None
        w = float(self.layer_weights.get(layer, self.weight))
        return None if w == 0.0 else w


@renamed_keys(enhance_a_video="eav")
@dataclass
class AttentionConfig:
    """Which attention implementation the video self-attention layers use, and Enhance-A-Video."""

    implementation: str = "sdpa"
    """Registered implementation name ("sdpa", "flash", and whatever was registered with register_attention)."""
    layers: list[int] | None = None
    """Layers that use `implementation` (None = all); the others use "sdpa" (hybrid models)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Passed to the implementation's factory (unknown keys are its error)."""
    eav: EavConfig | None = None
    """Enhance-A-Video on top of any implementation (None = off). Read from its old key `enhance_a_video` too."""

    def is_default(self) -> bool:
        return self.implementation == "sdpa" and not self.options and self.eav is None


# ---- processors ----------------------------------------------------------------------------------------------
class _VideoAttnProcessor(torch.nn.Module):
    """Shared part of the family processors: context, implementation call, Enhance-A-Video gain."""

    def __init__(
        self,
        impl: AttentionFn,
        layer: int,
        state: AttentionState,
        eav: EavConfig | None,
        eav_impl: str,
    ) -> None:
        super().__init__()
        self.impl = impl  # an nn.Module impl becomes the submodule "impl"
        self.layer = layer
        self.state = state
        self.eav = eav
        self.eav_impl = eav_impl

    def context(self, num_video_tokens: int, attention_mask: torch.Tensor | None) -> AttentionContext:
        st = self.state
        grid = st.grid
        if grid is not None and grid[0] * grid[1] * grid[2] != num_video_tokens:
            grid = None  # stale: the transformer was called on other latents without the adapter
        return AttentionContext(
            grid=grid,
            num_video_tokens=num_video_tokens,
            step=st.step,
            num_steps=st.num_steps,
            sigma=st.sigma,
            cfg_branch=st.cfg_branch,
            layer=self.layer,
            attention_mask=attention_mask,
        )

    def gain(self, q_video: torch.Tensor, k_video: torch.Tensor, ctx: AttentionContext) -> torch.Tensor | None:
        """Per-sample Enhance-A-Video gain [B] (float32), or None when it is off here."""
        if self.eav is None:
            return None
        w = self.eav.weight_for(ctx.layer, ctx.step, ctx.cfg_branch)
        if w is None:
            return None
        if ctx.grid is None:
            raise ValueError(
                "Enhance-A-Video needs the video token grid: call the transformer through the adapter "
                "(predict_velocity / forward_transformer / sample), which records it"
            )
        from vidpost.kernels.eav import cross_frame_intensity_per_sample, eav_gain  # imports triton

        f = ctx.grid[0]
        cfi = cross_frame_intensity_per_sample(q_video, k_video, f, impl=self.eav_impl)
        return eav_gain(cfi, f, w)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, eav={self.eav is not None}"


def _wan_rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding (as in diffusers' WanAttnProcessor)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanVideoAttnProcessor(_VideoAttnProcessor):
    """Wan self-attention (`attn1`): QKV projection, norm_q/norm_k, heads, RoPE, implementation, out projection."""

    def __call__(  # explicit signature: diffusers filters the kwargs it passes by the processor's signature
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        assert encoder_hidden_states is None and attn.add_k_proj is None, "Wan processor is for self-attention"
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _wan_rope(query, *rotary_emb)
            key = _wan_rope(key, *rotary_emb)
        ctx = self.context(query.shape[1], attention_mask)
        out = self.impl(query, key, value, ctx).flatten(2, 3).type_as(query)
        out = attn.to_out[1](attn.to_out[0](out))
        g = self.gain(query, key, ctx)
        if g is not None:
            out = out * g.to(out.device, out.dtype).view(-1, 1, 1)
        return out


class HunyuanVideoAttnProcessor(_VideoAttnProcessor):
    """HunyuanVideo joint attention (dual- and single-stream blocks), as diffusers' HunyuanVideoAttnProcessor2_0."""

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        from diffusers.models.embeddings import apply_rotary_emb

        n_video = hidden_states.shape[1]
        joint_input = attn.add_q_proj is None and encoder_hidden_states is not None  # single-stream block
        if joint_input:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            if joint_input:
                query = torch.cat(
                    [apply_rotary_emb(query[:, :n_video], image_rotary_emb, sequence_dim=1), query[:, n_video:]], 1
                )
                key = torch.cat(
                    [apply_rotary_emb(key[:, :n_video], image_rotary_emb, sequence_dim=1), key[:, n_video:]], 1
                )
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            eq = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            ek = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query, key, value = torch.cat([query, eq], 1), torch.cat([key, ek], 1), torch.cat([value, ev], 1)
        ctx = self.context(n_video, attention_mask)
        out = self.impl(query, key, value, ctx).flatten(2, 3).to(query.dtype)
        g = self.gain(query[:, :n_video], key[:, :n_video], ctx)
        if encoder_hidden_states is None:
            if g is not None:
                out = out * g.to(out.device, out.dtype).view(-1, 1, 1)
            return out, encoder_hidden_states
        out, enc_out = out[:, :n_video], out[:, n_video:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            enc_out = attn.to_add_out(enc_out)
        if g is not None:
            out = out * g.to(out.device, out.dtype).view(-1, 1, 1)
        return out, enc_out


# ---- install -------------------------------------------------------------------------------------------------
def attention_sites(transformer: torch.nn.Module) -> list[tuple[int, torch.nn.Module, type[_VideoAttnProcessor]]]:
    """(layer index, attention module, processor class) of every video self-attention layer of a transformer."""
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    m = transformer
    if isinstance(m, WanTransformer3DModel):
        return [(i, blk.attn1, WanVideoAttnProcessor) for i, blk in enumerate(m.blocks)]
    if isinstance(m, HunyuanVideoTransformer3DModel):
        dual = [(i, blk.attn, HunyuanVideoAttnProcessor) for i, blk in enumerate(m.transformer_blocks)]
        n = len(dual)
        single = [(n + j, blk.attn, HunyuanVideoAttnProcessor) for j, blk in enumerate(m.single_transformer_blocks)]
        return dual + single
    raise ValueError(f"video attention processors support Wan and HunyuanVideo transformers, not {type(transformer)}")


class AttentionHandle:
    """Undo of `install_attention`: `.remove()` puts the original processors back (also a context manager)."""

    def __init__(self, originals: list[tuple[torch.nn.Module, Any]], processors: list[_VideoAttnProcessor]) -> None:
        self._originals = originals
        self.processors = processors

    def remove(self) -> None:
        for attn, proc in reversed(self._originals):
            attn.set_processor(proc)
        self._originals = []

    def __enter__(self) -> AttentionHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def install_attention(adapter: VideoModelAdapter, cfg: AttentionConfig | None = None) -> AttentionHandle:
    """Replace the video self-attention processors of the adapter's transformer(s) per `cfg`; returns the handle.

    The implementation is resolved once here (unknown name → ValueError listing the registered ones; an
    unavailable one → "sdpa" with a warning; `force_reference()` → the factories' reference paths)."""
    cfg = cfg or AttentionConfig()
    name = cfg.implementation
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention implementation {name!r}; registered: {', '.join(registered_attention())}")
    entry = _REGISTRY[name]
    if entry.available is not None and not entry.available():
        logger.warning("attention implementation %r is not available here; using 'sdpa'", name)
        entry, options = _REGISTRY["sdpa"], {}
    else:
        options = dict(cfg.options)
    eav_impl = "reference" if prefer_reference() else "auto"
    state = adapter.attention_state
    transformers = [t for t in (adapter.transformer, getattr(adapter, "transformer_2", None)) if t is not None]
    all_sites = [attention_sites(t) for t in transformers]
    n = len(all_sites[0])
    eav = cfg.eav
    checks = [("layers", cfg.layers or [])]
    if eav is not None:
        checks += [
            ("eav.layers", eav.layers or []),
            ("eav.layer_weights", list(eav.layer_weights)),
        ]
    for label, layers in checks:
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"attention {label}: layer {bad[0]} out of range (the model has {n} layers)")
    originals: list[tuple[torch.nn.Module, Any]] = []
    processors: list[_VideoAttnProcessor] = []
    handle = AttentionHandle(originals, processors)
    try:
        for sites in all_sites:
            for layer, attn, proc_cls in sites:
                if cfg.layers is None or layer in cfg.layers:
                    impl = entry.factory(attn, layer, options)
                else:
                    impl = sdpa_attention
                proc = proc_cls(impl, layer, state, eav, eav_impl)
                dev_param = next(attn.parameters(), None)
                if isinstance(impl, torch.nn.Module) and dev_param is not None:
                    proc.to(dev_param.device)
                originals.append((attn, attn.processor))
                attn.set_processor(proc)
                processors.append(proc)
    except BaseException:
        handle.remove()  # a factory failed part-way: leave the model as it was
        raise
    return handle


__all__ = [
    "AttentionConfig",
    "AttentionContext",
    "AttentionHandle",
    "AttentionState",
    "EavConfig",
    "HunyuanVideoAttnProcessor",
    "WanVideoAttnProcessor",
    "attention_sites",
    "force_reference",
    "install_attention",
    "prefer_reference",
    "register_attention",
    "registered_attention",
    "sdpa_attention",
    "unregister_attention",
]


# ---- FP8 + block-sparse attention (vidpost/kernels/sparse_fp8_attention.py) ---------------------------------------------
def _fp8_sparse_factory(attn: torch.nn.Module, layer: int, options: dict) -> AttentionFn:
    """ "fp8_sparse": 3D-tile block-sparse attention with FP8 Q/K/P·V and a step-aware schedule (options: tile,
    schedule, quant, backend; see `make_fp8_sparse_attention`). The backend is chosen here, once: the Triton kernel on
    CUDA, the PyTorch reference elsewhere or under `force_reference()`."""
    from vidpost.kernels.sparse_fp8_attention import make_fp8_sparse_attention

    opts = dict(options)
    if prefer_reference():
        opts["backend"] = "reference"
    fn = make_fp8_sparse_attention(opts)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if ctx.grid is None:
            raise ValueError("attention 'fp8_sparse' needs the latent grid; call the model through its adapter")
        if ctx.attention_mask is not None and not bool(ctx.attention_mask.all()):
            # padded text tokens (HunyuanVideo): the tiled kernel has no key mask, so this call stays exact on SDPA
            return sdpa_attention(q, k, v, ctx)
        return fn(q, k, v, ctx)

    run.backend = getattr(fn, "backend", None)  # type: ignore[attr-defined]
    return run


register_attention("fp8_sparse", _fp8_sparse_factory)
