"""LiT-style linear attention as the attention implementation "lit", weight inheritance, and the student folder.

`install_attention(adapter, AttentionConfig("lit", layers=..., options=...))` replaces the selected video
self-attention layers' softmax attention by `LiTAttention` (maths in `vidpost.kernels.linear_attention`):

    out = LinearAttn_ReLU(group(q), group(k), group(v))  +  DWConv3d(v_video over the (T, H, W) grid)

on the post-norm, post-RoPE Q and K the processor computes with the layer's own projections. The Q/K/V/O
projections are therefore *inherited* from the dense teacher unchanged; LiT adds only the depthwise conv weight
[C, 1, k, k, k] and bias [C] (C = the layer's value width), both initialised to zero, so the student starts as
"teacher projections + ReLU linear attention" and the conv branch grows from zero during distillation.

Options (`AttentionConfig.options`): `heads` — heads of the linear branch (default null: the teacher's heads;
a divisor h of them groups consecutive teacher heads into h wider heads, LiT's "few heads"); `dwc_kernel` — odd
conv size (default 3, 0 = no conv branch); `eps` — normaliser ε (default 1e-6).
Text tokens of joint attention (HunyuanVideo) are keys and queries of the linear branch (padding masked via
`ctx.attention_mask`), with no conv term. The conv needs the token grid: calling a LiT layer outside the
adapter (no grid recorded) is a ValueError. `force_reference()` installs the O(S²) form of the same maths.

Departures from LiT (Wang et al., 2025): no ViT-style softmax-to-linear curriculum; the linear branch is plain
ReLU linear attention (no focused / power kernel); the conv acts on V of the video tokens only and is added
after normalisation (before the output projection), as in LiT's DWC branch.

Ablation "no inheritance": `reinit_attention_projections` re-initialises the Q/K/V/O projections (and
HunyuanVideo's added text projections) of the chosen layers with PyTorch's default `nn.Linear` init.

Student folder (`save_lit_student`): a complete diffusers model folder (the transformer saved with its stock
processors, so stock diffusers loads it as a dense model), `lit.safetensors` (the LiT parameters, keys
`<transformer>.<layer>.<name>`), `lit.json` (the `AttentionConfig` of the LiT layers). `vidpost.models.load`
reinstalls LiT whenever `lit.json` is present (`load_lit_student` is the same call).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from vidpost.kernels.linear_attention import (
    grid_dwconv,
    group_heads,
    key_mask_from_attention_mask,
    linear_attention,
    linear_attention_naive,
)
from vidpost.outputs import atomic_dir

from .attention import (
    AttentionConfig,
    AttentionContext,
    HunyuanVideoAttnProcessor,
    WanVideoAttnProcessor,
    attention_sites,
    install_attention,
    prefer_reference,
    register_attention,
)

if TYPE_CHECKING:
    from .base import VideoModelAdapter

LIT_CONFIG = "lit.json"
LIT_WEIGHTS = "lit.safetensors"
LIT_OPTIONS = ("heads", "dwc_kernel", "eps")


class LiTAttention(torch.nn.Module):
    """ReLU linear attention over [B, S, H, D] with optional head grouping and a zero-initialised grid DWConv."""

    def __init__(
        self,
        model_heads: int,
        value_channels: int,
        heads: int | None = None,
        dwc_kernel: int = 3,
        eps: float = 1e-6,
        reference: bool = False,
    ) -> None:
        super().__init__()
        heads = model_heads if heads is None else int(heads)
        if heads <= 0 or model_heads % heads:
            raise ValueError(f"lit option heads={heads} must divide the layer's {model_heads} attention heads")
        if dwc_kernel < 0 or (dwc_kernel and dwc_kernel % 2 == 0):
            raise ValueError(f"lit option dwc_kernel={dwc_kernel} must be 0 (off) or an odd size")
        if eps <= 0:
            raise ValueError(f"lit option eps={eps} must be > 0")
        self.model_heads, self.heads, self.eps, self.reference = model_heads, heads, float(eps), reference
        self.dwc_kernel = int(dwc_kernel)
        if dwc_kernel:
            k = self.dwc_kernel
            self.dwc_weight = torch.nn.Parameter(torch.zeros(value_channels, 1, k, k, k))
            self.dwc_bias = torch.nn.Parameter(torch.zeros(value_channels))
        else:
            self.register_parameter("dwc_weight", None)
            self.register_parameter("dwc_bias", None)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        b, s, h, dv = v.shape
        mask = key_mask_from_attention_mask(ctx.attention_mask, b, s)
        fn = linear_attention_naive if self.reference else linear_attention
        out = fn(group_heads(q, self.heads), group_heads(k, self.heads), group_heads(v, self.heads), mask, self.eps)
        out = out.reshape(b, s, h, dv)
        if self.dwc_weight is None:
            return out
        if ctx.grid is None:
            raise ValueError(
                "lit attention's depthwise conv needs the video token grid: call the transformer through the "
                "adapter (predict_velocity / forward_transformer / sample), which records it"
            )
        n = ctx.num_video_tokens
        conv = grid_dwconv(v[:, :n].reshape(b, n, h * dv), ctx.grid, self.dwc_weight, self.dwc_bias)
        conv = conv.reshape(b, n, h, dv).to(out.dtype)
        if n == s:
            return out + conv
        return torch.cat([out[:, :n] + conv, out[:, n:]], 1)

    def extra_repr(self) -> str:
        return f"heads={self.heads} (model {self.model_heads}), dwc_kernel={self.dwc_kernel}, ref={self.reference}"


def lit_factory(attn: torch.nn.Module, layer: int, options: dict) -> LiTAttention:
    unknown = [key for key in options if key not in LIT_OPTIONS]
    if unknown:
        raise ValueError(f"attention implementation 'lit': unknown option '{unknown[0]}' (known: {list(LIT_OPTIONS)})")
    module = LiTAttention(
        attn.heads,
        attn.to_v.out_features,
        heads=options.get("heads"),
        dwc_kernel=int(options.get("dwc_kernel", 3)),
        eps=float(options.get("eps", 1e-6)),
        reference=prefer_reference(),
    )
    return module.to(attn.to_v.weight.device)


register_attention("lit", lit_factory)


# ---- inheritance ---------------------------------------------------------------------------------------------
PROJECTIONS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def _transformers(adapter: VideoModelAdapter) -> list[tuple[str, torch.nn.Module]]:
    out = [("transformer", adapter.transformer)]
    if getattr(adapter, "transformer_2", None) is not None:
        out.append(("transformer_2", adapter.transformer_2))
    return out


@torch.no_grad()
def reinit_attention_projections(adapter: VideoModelAdapter, layers: list[int] | None, seed: int = 0) -> int:
    """The "no inheritance" ablation: default `nn.Linear` init (seeded per layer) of the Q/K/V/O projections of
    `layers` (None = all video self-attention layers). Returns the number of linear layers reset."""
    count = 0
    for _, t in _transformers(adapter):
        for layer, attn, _ in attention_sites(t):
            if layers is not None and layer not in layers:
                continue
            linears = [getattr(attn, n, None) for n in PROJECTIONS] + [attn.to_out[0] if attn.to_out else None]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 100_003 + layer)
                for lin in linears:
                    if isinstance(lin, torch.nn.Linear):
                        lin.reset_parameters()
                        count += 1
    return count


# ---- student folder ------------------------------------------------------------------------------------------
def lit_modules(adapter: VideoModelAdapter) -> dict[str, LiTAttention]:
    """`<transformer>.<layer>` → the installed LiTAttention modules."""
    out: dict[str, LiTAttention] = {}
    for tname, t in _transformers(adapter):
        for layer, attn, _ in attention_sites(t):
            impl = getattr(attn.processor, "impl", None)
            if isinstance(impl, LiTAttention):
                out[f"{tname}.{layer}"] = impl
    return out


def lit_state_dict(adapter: VideoModelAdapter) -> dict[str, torch.Tensor]:
    return {
        f"{key}.{name}": p.detach().float().cpu().contiguous()
        for key, m in lit_modules(adapter).items()
        for name, p in m.named_parameters()
    }


@contextlib.contextmanager
def stock_processors(adapter: VideoModelAdapter) -> Iterator[None]:
    """Within the block the video attention layers carry diffusers' stock processors (for saving a plain dense
    folder); the installed processors, with their parameters, are put back afterwards."""
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    stock = {WanVideoAttnProcessor: WanAttnProcessor, HunyuanVideoAttnProcessor: HunyuanVideoAttnProcessor2_0}
    swapped: list[tuple[torch.nn.Module, Any]] = []
    try:
        for _, t in _transformers(adapter):
            for _, attn, proc_cls in attention_sites(t):
                if isinstance(attn.processor, proc_cls):
                    swapped.append((attn, attn.processor))
                    attn.set_processor(stock[proc_cls]())
        yield
    finally:
        for attn, proc in swapped:
            attn.set_processor(proc)


def save_lit_student(adapter: VideoModelAdapter, cfg: AttentionConfig, path: str | os.PathLike) -> Path:
    """Write the student folder: diffusers model (stock processors) + lit.safetensors + lit.json."""
    path = Path(path)
    if cfg.implementation != "lit":
        raise ValueError(f"save_lit_student needs an AttentionConfig with implementation 'lit', not {cfg}")
    with atomic_dir(path, what=f"the student folder {path}") as tmp:
        with stock_processors(adapter):
            adapter.save_pretrained(tmp)
        save_file(lit_state_dict(adapter), str(tmp / LIT_WEIGHTS))
        meta = {"attention": {"implementation": "lit", "layers": cfg.layers, "options": dict(cfg.options)}}
        (tmp / LIT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_lit_config(path: str | os.PathLike) -> AttentionConfig | None:
    """The AttentionConfig stored in a student folder's lit.json, or None when the folder has none."""
    f = Path(path) / LIT_CONFIG
    if not f.exists():
        return None
    from vidpost.config import from_dict

    raw = json.loads(f.read_text()).get("attention") or {}
    cfg = from_dict(AttentionConfig, raw, prefix="lit.json attention.")
    if cfg.implementation != "lit":
        raise ValueError(f"{f}: implementation must be 'lit', got {cfg.implementation!r}")
    return cfg


def install_lit_from_folder(adapter: VideoModelAdapter, path: str | os.PathLike) -> AttentionConfig:
    """Install "lit" as recorded in `path/lit.json` and load `path/lit.safetensors` (keys must match exactly)."""
    path = Path(path)
    cfg = read_lit_config(path)
    if cfg is None:
        raise ValueError(f"{path} has no {LIT_CONFIG}: not a LiT student folder")
    install_attention(adapter, cfg)
    weights = load_file(str(path / LIT_WEIGHTS))
    modules = lit_modules(adapter)
    expected = {f"{key}.{name}" for key, m in modules.items() for name, _ in m.named_parameters()}
    if set(weights) != expected:
        diff = sorted(set(weights) ^ expected)
        raise ValueError(f"{path / LIT_WEIGHTS} does not match {LIT_CONFIG} (e.g. {diff[0]})")
    with torch.no_grad():
        for key, m in modules.items():
            for name, p in m.named_parameters():
                p.copy_(weights[f"{key}.{name}"].to(p.dtype))
            m.requires_grad_(False)
    return cfg


def load_lit_student(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> VideoModelAdapter:
    """Load a student folder written by `save_lit_student` (same as `vidpost.models.load(path)`)."""
    from . import load

    if read_lit_config(path) is None:
        raise ValueError(f"{path} has no {LIT_CONFIG}: not a LiT student folder")
    return load(path, dtype=dtype, device=device)


__all__ = [
    "LIT_CONFIG",
    "LIT_WEIGHTS",
    "LiTAttention",
    "install_lit_from_folder",
    "lit_factory",
    "lit_modules",
    "lit_state_dict",
    "load_lit_student",
    "read_lit_config",
    "reinit_attention_projections",
    "save_lit_student",
    "stock_processors",
]
