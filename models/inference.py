"""Inference settings applied to a loaded adapter: attention implementation / Enhance-A-Video ("eav"), step
caching, `torch.compile`. One typed config (`InferenceConfig`, nested dataclasses read by `vidpost.config.from_dict`:
an unknown key is an error that names it), one `apply_inference(adapter, settings) -> handle`, `handle.remove()`
undoes it.

    inference:
      attention: {implementation: sdpa, eav: {weight: 4}}                # vidpost.models.attention.AttentionConfig
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

from vidpost.config import from_dict
from vidpost.models.attention import AttentionConfig

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
        if self.method == "mag" and self.options.get("mag_ratios") is None and not self.options.get("calibrate"):
            raise ValueError(
                "cache.method mag needs the model's magnitude ratios in cache.options.mag_ratios (a list, one per "
                "step), or cache.options.calibrate: true for a run that measures and prints them"
            )

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
    attention: AttentionConfig | None = None
    """attention processor settings (vidpost.models.attention.AttentionConfig); null or {}: diffusers' own
    processors"""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """step caching (diffusers' cache hooks)"""
    compile: bool | str = False
    """torch.compile the transformer(s): true (default mode) or a mode name"""

    def __post_init__(self) -> None:
        if isinstance(self.attention, dict):  # a mapping given to the constructor: the same rules as from YAML
            self.attention = attention_config(self.attention) if self.attention else None
        if isinstance(self.cache, dict):
            self.cache = from_dict(CacheConfig, self.cache, prefix="inference.cache.")

    @classmethod
    def from_dict(cls, data: InferenceConfig | dict[str, Any] | None) -> InferenceConfig:
        """Read and validate the settings (`inference:` mapping); the cache options are checked against diffusers."""
        if isinstance(data, InferenceConfig):
            return data
        data = dict(data or {})
        if data.get("attention") == {}:
            data["attention"] = None  # {}: diffusers' own processors, as null
        cfg = from_dict(cls, data, prefix="inference.")
        cfg.cache.diffusers_config()  # validate the options
        return cfg


def attention_config(data: AttentionConfig | dict[str, Any]) -> AttentionConfig:
    """An `AttentionConfig` from its YAML mapping (unknown keys are errors that name them)."""
    if isinstance(data, AttentionConfig):
        return data
    return from_dict(AttentionConfig, dict(data), prefix="attention.")


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
    cfg = InferenceConfig.from_dict(settings)
    attention = cfg.attention
    if isinstance(attention, dict):  # assigned after construction: a mapping ({} = none) is read like YAML
        attention = attention_config(attention) if attention else None
    handle = InferenceHandle(adapter)
    if attention is not None:
        from vidpost.models.attention import install_attention

        h = install_attention(adapter, attention)
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
