"""Inference settings applied to a loaded adapter: attention implementation / Enhance-A-Video, step caching,
`torch.compile`. One typed config, one `apply_inference(adapter, settings) -> handle`, `handle.remove()` undoes it.

    inference:
      attention: {implementation: sdpa, enhance_a_video: {weight: 4}}     # vidpost.models.attention.AttentionConfig
      cache: {method: first_block, threshold: 0.05}                      # diffusers' cache hooks
      compile: false                                                     # or a torch.compile mode, e.g. max-autotune

Step caching uses diffusers' hooks on the transformer (`transformer.enable_cache`): first-block cache (skip the
remaining blocks when the first block's residual changed less than `threshold` since the last full step), MagCache
(skip by accumulated magnitude-ratio error; needs per-model `mag_ratios` or `calibrate: true`) and TaylorSeer
(forecast block outputs from a Taylor expansion over cached steps). The sampler (`models.sampling.denoise`,
`VideoModelAdapter.predict_velocity`) resets the hooks' state at the start of every generation and names the CFG
branch ("cond" / "uncond") around each transformer pass, which the hooks need to keep one cache per branch.
All are opt-in and leave the checkpoint untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

CACHE_METHODS = ("none", "first_block", "mag", "taylorseer")
TRANSFORMER_BLOCKS = r"(blocks|transformer_blocks|single_transformer_blocks)\.\d+"
"""Module names of the transformer blocks of Wan (`blocks.i`) and HunyuanVideo (dual- and single-stream)."""


@dataclass
class CacheConfig:
    method: str = "none"
    """none | first_block | mag | taylorseer"""
    threshold: float = 0.05
    """first_block: relative residual change below which the step reuses the cache; mag: accumulated error"""
    options: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments of the diffusers config (e.g. mag: max_skip_steps, retention_ratio, mag_ratios,
    calibrate; taylorseer: cache_interval, disable_cache_before_step, max_order)"""

    def __post_init__(self) -> None:
        if self.method not in CACHE_METHODS:
            raise ValueError(f"unknown cache method {self.method!r}; known: {', '.join(CACHE_METHODS)}")

    def diffusers_config(self, num_inference_steps: int | None = None):
        from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

        try:
            if self.method == "first_block":
                return FirstBlockCacheConfig(threshold=self.threshold, **self.options)
            if self.method == "mag":
                opts = dict(self.options)
                if num_inference_steps is not None:
                    opts.setdefault("num_inference_steps", num_inference_steps)
                return MagCacheConfig(threshold=self.threshold, **opts)
            if self.method == "taylorseer":
                opts = dict(self.options)
                opts.setdefault("taylor_factors_dtype", torch.float32)
                # diffusers' default patterns ("^blocks.*attn", fullmatch) match no Wan module name; forecast whole
                # transformer blocks of Wan and HunyuanVideo instead
                opts.setdefault("cache_identifiers", [TRANSFORMER_BLOCKS])
                return TaylorSeerCacheConfig(**opts)
        except TypeError as e:
            raise ValueError(f"cache.options for {self.method}: {e}") from None
        return None


@dataclass
class InferenceConfig:
    attention: dict[str, Any] = field(default_factory=dict)
    """attention processor settings (vidpost.models.attention.AttentionConfig); empty: diffusers' own processors"""
    cache: CacheConfig = field(default_factory=CacheConfig)
    compile: bool | str = False
    """torch.compile the transformer(s): true (default mode) or a mode name"""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> InferenceConfig:
        data = dict(data or {})
        _check_keys(cls, data, "inference")
        cache = data.get("cache") or {}
        if not isinstance(cache, dict):
            raise ValueError(f"inference.cache must be a mapping, got {cache!r}")
        _check_keys(CacheConfig, cache, "inference.cache")
        cfg = cls(attention=dict(data.get("attention") or {}), cache=CacheConfig(**cache))
        cfg.compile = data.get("compile", False)
        if not isinstance(cfg.compile, (bool, str)):
            raise ValueError(f"inference.compile must be true/false or a torch.compile mode, got {cfg.compile!r}")
        if cfg.attention:
            attention_config(cfg.attention)  # validate
        cfg.cache.diffusers_config()  # validate the options
        return cfg


def _check_keys(cls: type, data: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key '{where}.{unknown[0]}' (known: {', '.join(sorted(known))})")


def attention_config(data: dict[str, Any]):
    """An `AttentionConfig` from its YAML mapping (unknown keys are errors that name them)."""
    from vidpost.models.attention import AttentionConfig, EnhanceAVideoConfig

    if isinstance(data, AttentionConfig):
        return data
    data = dict(data)
    _check_keys(AttentionConfig, data, "attention")
    eav = data.get("enhance_a_video")
    if eav is not None:
        if not isinstance(eav, dict):
            raise ValueError(f"attention.enhance_a_video must be a mapping, got {eav!r}")
        _check_keys(EnhanceAVideoConfig, eav, "attention.enhance_a_video")
        eav = dict(eav)
        if "layer_weights" in eav:
            eav["layer_weights"] = {int(k): float(v) for k, v in (eav["layer_weights"] or {}).items()}
        data["enhance_a_video"] = EnhanceAVideoConfig(**eav)
    return AttentionConfig(**data)


class InferenceHandle:
    """Undoes what `apply_inference` did (attention processors, cache hooks, compiled modules)."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self._undo: list[Any] = []

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


def _transformers(adapter: Any) -> list[torch.nn.Module]:
    return [m for m in (adapter.transformer, getattr(adapter, "transformer_2", None)) if m is not None]


def apply_inference(
    adapter: Any, settings: InferenceConfig | dict[str, Any] | None, *, num_inference_steps: int | None = None
) -> InferenceHandle:
    """Install `settings` on `adapter` (in place) → a handle whose `.remove()` restores the adapter."""
    cfg = settings if isinstance(settings, InferenceConfig) else InferenceConfig.from_dict(settings)
    handle = InferenceHandle(adapter)
    if cfg.attention:
        from vidpost.models.attention import install_attention

        h = install_attention(adapter, attention_config(cfg.attention))
        handle._undo.append(h.remove)
    cache = cfg.cache.diffusers_config(num_inference_steps)
    if cache is not None:
        for t in _transformers(adapter):
            t.enable_cache(dataclasses.replace(cache) if dataclasses.is_dataclass(cache) else cache)
            handle._undo.append(t.disable_cache)
    if cfg.compile:
        mode = None if cfg.compile is True else str(cfg.compile)
        for module in _transformers(adapter):
            module.compile(mode=mode)
            handle._undo.append(lambda m=module: setattr(m, "_compiled_call_impl", None))
    return handle


def cache_enabled(module: torch.nn.Module) -> bool:
    return bool(getattr(module, "is_cache_enabled", False))


@contextlib.contextmanager
def branch_context(adapter: Any, name: str) -> Iterator[None]:
    """Name the CFG branch ("cond" / "uncond") of the transformer passes inside, for diffusers' cache hooks."""
    with contextlib.ExitStack() as stack:
        for t in _transformers(adapter):
            if cache_enabled(t):
                stack.enter_context(t.cache_context(name))
        yield


def reset_step_caches(adapter: Any) -> None:
    """Forget the cached states of the previous generation (call at the start of every denoising loop)."""
    for t in _transformers(adapter):
        if cache_enabled(t):
            t._reset_stateful_cache()
