"""3D tile layout for video tokens: frame-major order <-> tile-major order, with padding.

A video DiT flattens its latent grid (T, H, W) frame-major: token ``t*H*W + h*W + w``. Block-sparse attention
wants tokens that are close in space-time to sit in the same contiguous block, so the sequence is permuted once
per forward into *tile-major* order:

1. The grid is cut into tiles of ``Tt x Th x Tw`` positions; a grid that does not divide is padded up to
   ``ceil(T/Tt)*Tt`` etc. (Wan 480p: 21 x 30 x 52 latent positions with tiles 2 x 4 x 4 gives 11 x 8 x 13 tiles).
2. Tiles are enumerated frame-major over the tile grid ``(ti, hi, wi)``.
3. Each tile owns ``block`` consecutive slots, ``block = next_power_of_two(max(16, Tt*Th*Tw))`` (a Triton
   block must be a power of two of at least 16). Inside a tile the real positions come first, in frame-major
   order of their offsets ``(dt, dh, dw)``, then the padding slots. A tile therefore holds ``valid_len[tile]``
   real tokens followed by padding, so a kernel masks padded keys with one comparison ``slot < valid_len``.

``to_tiles`` gathers (padding slots read zeros), ``from_tiles`` gathers back the real slots, so
``from_tiles(to_tiles(x)) == x`` bit for bit. Rotary embeddings are applied before the reorder; attention is
equivariant under a permutation of the tokens, so the result is unchanged as long as padded keys are masked.
Padded query rows are computed and dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch


def _as_triple(value: tuple[int, ...] | list[int], name: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in value)
    if len(values) != 3 or any(v < 1 for v in values):
        raise ValueError(f"{name} must be three positive integers (t, h, w), got {value!r}")
    return values  # type: ignore[return-value]


def block_size_for_tile(tile: tuple[int, int, int]) -> int:
    """Slots per tile: the next power of two of ``max(16, Tt*Th*Tw)``."""
    return 1 << max(4, math.ceil(math.log2(math.prod(tile))))


@dataclass(frozen=True, eq=False)
class TileLayout:
    """The permutation between frame-major video tokens and tile-major slots (index tensors on the CPU)."""

    grid: tuple[int, int, int]
    """Latent grid (T, H, W) of the video tokens."""
    tile: tuple[int, int, int]
    """Tile shape (Tt, Th, Tw) in latent positions."""
    tiles_per_dim: tuple[int, int, int]
    """Number of tiles along t, h, w (ceil division)."""
    block: int
    """Slots per tile (power of two >= 16 and >= Tt*Th*Tw)."""
    slot_source_S: torch.Tensor
    """int64 [num_tiles*block]: frame-major source token of each slot, ``num_tokens`` for a padding slot."""
    token_slot_N: torch.Tensor
    """int64 [num_tokens]: slot of each frame-major token (the inverse permutation on real slots)."""
    valid_len_M: torch.Tensor
    """int32 [num_tiles]: number of real tokens in each tile (they occupy the tile's first slots)."""
    tile_coords_M3: torch.Tensor
    """int64 [num_tiles, 3]: (ti, hi, wi) of each tile."""
    _cache: dict = field(default_factory=dict, repr=False)

    def cached(self, key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Memoise a tensor derived from this layout (e.g. an index on a device), so a forward pays no copy."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def on(self, name: str, device: torch.device) -> torch.Tensor:
        """One of the index tensors on ``device`` (copied once)."""
        return self.cached((name, str(device)), lambda: getattr(self, name).to(device))

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def num_tiles(self) -> int:
        return math.prod(self.tiles_per_dim)

    @property
    def num_slots(self) -> int:
        return self.num_tiles * self.block

    def to_tiles(self, x_BNHD: torch.Tensor) -> torch.Tensor:
        """Frame-major video tokens [B, N, H, D] -> tile-major slots [B, num_slots, H, D] (padding = 0)."""
        if x_BNHD.shape[1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} video tokens for grid {self.grid}, got {x_BNHD.shape[1]}")
        padded = torch.cat([x_BNHD, x_BNHD.new_zeros(x_BNHD.shape[0], 1, *x_BNHD.shape[2:])], dim=1)
        return padded.index_select(1, self.on("slot_source_S", x_BNHD.device))

    def from_tiles(self, y_BSHD: torch.Tensor) -> torch.Tensor:
        """Tile-major slots [B, num_slots, H, D] -> frame-major video tokens [B, N, H, D] (padding dropped)."""
        if y_BSHD.shape[1] != self.num_slots:
            raise ValueError(f"expected {self.num_slots} tile slots, got {y_BSHD.shape[1]}")
        return y_BSHD.index_select(1, self.on("token_slot_N", y_BSHD.device))

    def slot_valid_S(self) -> torch.Tensor:
        """bool [num_slots]: True on real slots."""
        return self.slot_source_S < self.num_tokens


@lru_cache(maxsize=64)
def make_tile_layout(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> TileLayout:
    """Build (and cache) the tile layout of a latent grid; ``grid`` and ``tile`` are (t, h, w) triples."""
    T, H, W = _as_triple(grid, "grid")
    tt, th, tw = _as_triple(tile, "tile")
    nt, nh, nw = math.ceil(T / tt), math.ceil(H / th), math.ceil(W / tw)
    block = block_size_for_tile((tt, th, tw))
    num_tokens = T * H * W

    # Tile coordinates, frame-major over the tile grid.
    ti, hi, wi = torch.meshgrid(torch.arange(nt), torch.arange(nh), torch.arange(nw), indexing="ij")
    coords = torch.stack([ti.reshape(-1), hi.reshape(-1), wi.reshape(-1)], dim=1)  # [M, 3]
    # Offsets inside a tile, frame-major.
    dt, dh, dw = torch.meshgrid(torch.arange(tt), torch.arange(th), torch.arange(tw), indexing="ij")
    offsets = torch.stack([dt.reshape(-1), dh.reshape(-1), dw.reshape(-1)], dim=1)  # [P, 3]
    pos = coords[:, None, :] * torch.tensor([tt, th, tw]) + offsets[None, :, :]  # [M, P, 3]
    valid = (pos[..., 0] < T) & (pos[..., 1] < H) & (pos[..., 2] < W)  # [M, P]
    source = pos[..., 0] * (H * W) + pos[..., 1] * W + pos[..., 2]
    source = torch.where(valid, source, torch.full_like(source, num_tokens))
    # Real slots first inside each tile (stable order), then padding, then the power-of-two tail.
    order = torch.argsort((~valid).to(torch.int64), dim=1, stable=True)
    source = torch.gather(source, 1, order)
    tail = torch.full((source.shape[0], block - source.shape[1]), num_tokens, dtype=torch.int64)
    slot_source = torch.cat([source, tail], dim=1).reshape(-1)

    real = slot_source < num_tokens
    token_slot = torch.empty(num_tokens, dtype=torch.int64)
    token_slot[slot_source[real]] = torch.arange(slot_source.numel())[real]
    return TileLayout(
        grid=(T, H, W),
        tile=(tt, th, tw),
        tiles_per_dim=(nt, nh, nw),
        block=block,
        slot_source_S=slot_source,
        token_slot_N=token_slot,
        valid_len_M=valid.sum(dim=1).to(torch.int32),
        tile_coords_M3=coords,
    )
