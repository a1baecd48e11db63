"""Block masks over tile pairs for block-sparse video attention, and their per-query-block key lists.

Blocks are the tiles of a :class:`~vidpost.kernels.tile_layout.TileLayout` (``layout.block`` slots each),
followed by ``num_text_blocks`` blocks of text tokens. A block mask ``mask[b, h, m, n]`` says whether query
block ``m`` attends to key block ``n``.

- **Static 3D window (STA-like).** Query tile ``i`` keeps key tile ``j`` when, along each of t, h, w,
  ``|c_i - j| <= w`` with the window centre ``c_i = clamp(i, w, n - 1 - w)`` (the window is shifted inward at
  the border so every tile sees the same number of tiles, as in Sliding Tile Attention). A half-width ``w``
  that covers the whole axis keeps the whole axis. Head-independent.
- **Pooled top-k (VSA-like).** Q and K are mean-pooled over the real tokens of each tile; per head the
  coarse scores ``q_pool · k_poolᵀ / sqrt(D)`` pick the ``k`` highest key tiles of each query tile.
  Departure from VSA: VSA learns to use a coarse attention *output* as well; here the pooled scores only
  select blocks for the fine attention.
- A plan may use the window, the top-k, or both (union). The diagonal tile is always kept, so every query row
  has at least one real key. Text: every query block attends to every text block, and text query blocks
  attend to every block.

``mask_to_lists`` turns the video query rows of a mask into ``kv_index[b, h, m, :]`` (selected key blocks, ascending, padded with 0)
and ``kv_count[b, h, m]``; the kernel walks only those lists, so masked blocks are never loaded.
"""

from __future__ import annotations

import math

import torch

from .tile_layout import TileLayout


def window_block_mask(layout: TileLayout, window: tuple[int, int, int]) -> torch.Tensor:
    """bool [M, M] over the video tiles: STA-like window of tile half-widths ``window`` = (wt, wh, ww)."""
    if len(window) != 3 or any(int(w) < 0 for w in window):
        raise ValueError(f"window must be three non-negative tile half-widths (t, h, w), got {window!r}")
    coords = layout.tile_coords_M3
    keep = torch.ones(layout.num_tiles, layout.num_tiles, dtype=torch.bool)
    for axis, (n, w) in enumerate(zip(layout.tiles_per_dim, window)):
        w = int(w)
        c = coords[:, axis]
        if 2 * w + 1 >= n:
            continue
        centre = c.clamp(w, n - 1 - w)
        keep &= (centre[:, None] - c[None, :]).abs() <= w
    return keep


def window_tile_count(layout: TileLayout, window: tuple[int, int, int]) -> int:
    """Key tiles each query tile keeps under the window (the same for every tile)."""
    count = 1
    for w, n in zip(window, layout.tiles_per_dim):
        count *= min(2 * int(w) + 1, n)
    return count


def pool_tiles(x_BHSD: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """Mean over the real tokens of each tile: [B, H, num_slots(+text), D] -> [B, H, M, D] (fp32)."""
    B, H, _, D = x_BHSD.shape
    video = x_BHSD[:, :, : layout.num_slots].float().reshape(B, H, layout.num_tiles, layout.block, D)
    count = layout.valid_len_M.to(device=x_BHSD.device, dtype=torch.float32)
    return video.sum(dim=3) / count[:, None]  # padding slots hold zeros


def topk_block_mask(q_BHSD: torch.Tensor, k_BHSD: torch.Tensor, layout: TileLayout, topk: int) -> torch.Tensor:
    """bool [B, H, M, M]: per head, the ``topk`` key tiles with the highest pooled score per query tile."""
    if int(topk) < 1:
        raise ValueError(f"topk must be a positive number of key tiles, got {topk!r}")
    q_pool, k_pool = pool_tiles(q_BHSD, layout), pool_tiles(k_BHSD, layout)
    scores = q_pool @ k_pool.transpose(-1, -2) / math.sqrt(q_BHSD.shape[-1])
    chosen = scores.topk(min(int(topk), layout.num_tiles), dim=-1).indices
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter(-1, chosen, True)


def video_rows_mask(video_mask: torch.Tensor, num_text_blocks: int) -> torch.Tensor:
    """Rows of the video query blocks: the video mask [B|1, H|1, M, M] plus the diagonal, then every text block.

    Returns bool [B|1, H|1, M, M + num_text_blocks]. (Text query blocks attend to every block; the kernel and
    the reference treat the rows from ``dense_from = M`` on as dense, so they need no list.)
    """
    M = video_mask.shape[-1]
    eye = torch.eye(M, dtype=torch.bool, device=video_mask.device)
    text = torch.ones(*video_mask.shape[:-1], num_text_blocks, dtype=torch.bool, device=video_mask.device)
    return torch.cat([video_mask | eye, text], dim=-1)


def mask_to_lists(mask_BHMN: torch.Tensor, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected key blocks per query block: (``kv_index`` int32 [B, H, M, L], ``kv_count`` int32 [B, H, M]).

    ``L = max_len`` (a static upper bound on the selected blocks per row, so shapes do not depend on data; the
    caller guarantees it) or N. Unused list entries are 0.
    """
    N = mask_BHMN.shape[-1]
    L = N if max_len is None else min(int(max_len), N)
    col = torch.arange(N, device=mask_BHMN.device)
    key = torch.where(mask_BHMN, col, col + N)  # selected blocks first, ascending
    order = key.argsort(dim=-1)[..., :L]
    count = mask_BHMN.sum(dim=-1)
    index = torch.where(torch.arange(L, device=mask_BHMN.device) < count[..., None], order, torch.zeros_like(order))
    return index.to(torch.int32).contiguous(), count.to(torch.int32).contiguous()


def lists_to_mask(kv_index: torch.Tensor, kv_count: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Inverse of :func:`mask_to_lists`: bool [B, H, M, num_blocks]."""
    L = kv_index.shape[-1]
    used = torch.arange(L, device=kv_index.device) < kv_count[..., None].long()
    target = torch.where(used, kv_index.long(), torch.full_like(kv_index, num_blocks, dtype=torch.long))
    mask = torch.zeros(*kv_index.shape[:-1], num_blocks + 1, dtype=torch.bool, device=kv_index.device)
    return mask.scatter(-1, target, True)[..., :num_blocks]
