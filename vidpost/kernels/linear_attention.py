"""ReLU linear attention with a depthwise 3D convolution on V over the latent grid (LiT's linear branch).

Shapes use the attention-processor layout: q, k, v are [B, S, H, D] (tokens, then heads). With φ = ReLU,

    out_i = φ(q_i)ᵀ (Σ_j m_j φ(k_j) v_jᵀ) / (φ(q_i)ᵀ Σ_j m_j φ(k_j) + ε)

where m_j ∈ {0, 1} is the key mask (1 = attend; HunyuanVideo's text padding, None = all keys). Two forms:
- `linear_attention` (the one used): the KV-state form, O(S·D²) per head. The state KV = Σ_j φ(k_j) v_jᵀ
  [B, H, D, D] and the normaliser z = Σ_j φ(k_j) [B, H, D] are accumulated in float32 whatever the input dtype;
  the output is cast back to the input dtype.
- `linear_attention_naive`: the same formula through the S×S matrix A_ij = m_j·φ(q_i)ᵀφ(k_j), O(S²·D); it is
  the test reference (and what `force_reference()` installs), never a fast path.
Since φ(c·q) = c·φ(q) for c > 0 cancels between numerator and denominator, the softmax 1/√D scale has no effect
and is not applied. A query with φ(q_i) = 0 (all components ≤ 0) gets out_i = 0.

Few, wide heads (`group_heads`): the linear branch may use h heads of width (H/h)·D instead of the teacher's H
heads of width D by concatenating consecutive teacher heads (heads g·H/h … (g+1)·H/h − 1 form group g); the
output is split back in the same order, so the channel layout seen by the output projection is unchanged.

Depthwise conv (`grid_dwconv`): the video tokens' values (frame-major order t·H·W + h·W + w, the first
T·H·W tokens) are reshaped to [B, C = H·D, T, H, W], convolved by a depthwise `conv3d` (groups = C, zero
padding k//2, odd kernel) and added to the video tokens' attention output. Tokens after the video tokens (text,
joint attention) are keys/values of the linear branch like any other but get no convolution term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def key_mask_from_attention_mask(mask: torch.Tensor | None, batch: int, seq: int) -> torch.Tensor | None:
    """A boolean [B, S] key mask (True = attend) from an SDPA-style mask broadcastable to [B, heads, S, S].

    Linear attention supports only query-independent masks (key padding, as HunyuanVideo builds them); a mask
    whose rows differ is a ValueError. Float masks count entries > -1e4 as attended."""
    if mask is None:
        return None
    m = mask if mask.dtype == torch.bool else mask > -1e4
    while m.ndim < 4:
        m = m.unsqueeze(0)
    m = m.expand(batch, m.shape[1], m.shape[2], seq)
    if m.shape[1] > 1 and not (m == m[:, :1]).all():
        raise ValueError("linear attention supports only masks that are the same for every head (key padding)")
    m = m[:, 0]
    if m.shape[1] > 1 and not (m == m[:, :1]).all():
        raise ValueError("linear attention supports only query-independent masks (key padding), not a full S×S mask")
    return m[:, 0]


def group_heads(x_BSHD: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, S, H, D] → [B, S, heads, (H/heads)·D] by concatenating consecutive heads."""
    b, s, h, d = x_BSHD.shape
    if heads <= 0 or h % heads:
        raise ValueError(f"linear attention heads={heads} must divide the model's {h} attention heads")
    return x_BSHD.reshape(b, s, heads, (h // heads) * d)


def linear_attention(
    q_BSHD: torch.Tensor,
    k_BSHD: torch.Tensor,
    v_BSHD: torch.Tensor,
    key_mask_BS: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """ReLU linear attention via the KV state (O(S·D²)); fp32 accumulation; returns [B, S, H, Dv] in q's dtype."""
    dtype = q_BSHD.dtype
    q = F.relu(q_BSHD.float())
    k = F.relu(k_BSHD.float())
    v = v_BSHD.float()
    if key_mask_BS is not None:
        k = k * key_mask_BS[:, :, None, None].to(k.dtype)
    kv_BHDE = torch.einsum("bshd,bshe->bhde", k, v)
    z_BHD = k.sum(1)
    num = torch.einsum("bshd,bhde->bshe", q, kv_BHDE)
    den = torch.einsum("bshd,bhd->bsh", q, z_BHD)[..., None] + eps
    return (num / den).to(dtype)


def linear_attention_naive(
    q_BSHD: torch.Tensor,
    k_BSHD: torch.Tensor,
    v_BSHD: torch.Tensor,
    key_mask_BS: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The same formula through the S×S matrix (O(S²·D)); the reference for tests."""
    dtype = q_BSHD.dtype
    q = F.relu(q_BSHD.float()).transpose(1, 2)
    k = F.relu(k_BSHD.float()).transpose(1, 2)
    v = v_BSHD.float().transpose(1, 2)
    a_BHSS = q @ k.transpose(-1, -2)
    if key_mask_BS is not None:
        a_BHSS = a_BHSS * key_mask_BS[:, None, None, :].to(a_BHSS.dtype)
    out = (a_BHSS @ v) / (a_BHSS.sum(-1, keepdim=True) + eps)
    return out.transpose(1, 2).to(dtype)


def grid_dwconv(
    v_BND: torch.Tensor, grid: tuple[int, int, int], weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Depthwise conv3d of video-token values over the (T, H, W) grid.

    v_BND: [B, N = T·H·W, C] in frame-major token order; weight: [C, 1, kt, kh, kw] (odd sizes); bias: [C].
    Returns [B, N, C] in v's dtype (computed in the weight's dtype promoted with v's)."""
    b, n, c = v_BND.shape
    t, h, w = grid
    if t * h * w != n:
        raise ValueError(f"grid {grid} has {t * h * w} tokens but {n} video tokens were given")
    if weight.shape[0] != c or weight.shape[1] != 1 or any(s % 2 == 0 for s in weight.shape[2:]):
        raise ValueError(f"depthwise weight must be [{c}, 1, odd, odd, odd], got {list(weight.shape)}")
    ct = torch.promote_types(v_BND.dtype, weight.dtype)
    x = v_BND.to(ct).transpose(1, 2).reshape(b, c, t, h, w)
    pad = tuple(s // 2 for s in weight.shape[2:])
    y = F.conv3d(x, weight.to(ct), None if bias is None else bias.to(ct), padding=pad, groups=c)
    return y.reshape(b, c, n).transpose(1, 2).to(v_BND.dtype)


__all__ = ["grid_dwconv", "group_heads", "key_mask_from_attention_mask", "linear_attention", "linear_attention_naive"]
