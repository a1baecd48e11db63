"""Published transformer configurations of the real models, for computing what does not need their weights (packed
weight bytes of a quantisation recipe, memory estimates): `meta_transformer(name)` builds the diffusers class on the
meta device (no memory, no download)."""

from __future__ import annotations

from typing import Any

import torch

WAN_TRANSFORMERS: dict[str, dict[str, Any]] = {
    "wan2.1-t2v-1.3b": {"num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960, "num_layers": 30},
    "wan2.1-t2v-14b": {"num_attention_heads": 40, "attention_head_dim": 128, "ffn_dim": 13824, "num_layers": 40},
}
"""The `transformer/config.json` entries of the Wan-AI Diffusers repositories that differ between sizes; the rest
is `WAN_COMMON`."""

WAN_COMMON: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
}


def meta_transformer(name: str) -> torch.nn.Module:
    """The `WanTransformer3DModel` of `name` (a key of `WAN_TRANSFORMERS`) with meta tensors: shapes only."""
    from diffusers import WanTransformer3DModel

    if name not in WAN_TRANSFORMERS:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(WAN_TRANSFORMERS)}")
    with torch.device("meta"):
        return WanTransformer3DModel(**WAN_COMMON, **WAN_TRANSFORMERS[name])
