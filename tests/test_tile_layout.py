"""Tile layout (frame-major <-> tile-major) and block masks over tiles."""

from __future__ import annotations

import itertools

import pytest
import torch

from vidpost.kernels.block_mask import (
    lists_to_mask,
    mask_to_lists,
    topk_block_mask,
    window_block_mask,
    window_tile_count,
)
from vidpost.kernels.tile_layout import block_size_for_tile, make_tile_layout


@pytest.mark.parametrize(
    "grid,tile", [((3, 5, 7), (2, 4, 4)), ((1, 1, 1), (2, 2, 2)), ((4, 6, 9), (2, 3, 3)), ((5, 3, 2), (1, 1, 1))]
)
def test_round_trip_exact_and_padding_zero(grid, tile):
    layout = make_tile_layout(grid, tile)
    N = grid[0] * grid[1] * grid[2]
    x = torch.randn(2, N, 3, 5)
    tiles = layout.to_tiles(x)
    assert tiles.shape == (2, layout.num_slots, 3, 5)
    assert torch.equal(layout.from_tiles(tiles), x)
    valid = layout.slot_valid_S()
    assert int(valid.sum()) == N == int(layout.valid_len_M.sum())
    assert torch.all(tiles[:, ~valid] == 0)
    # Real slots first in every tile.
    per_tile = valid.reshape(layout.num_tiles, layout.block)
    assert torch.equal(per_tile, torch.arange(layout.block)[None, :] < layout.valid_len_M[:, None])
    # token_slot is the inverse permutation on real slots.
    assert torch.equal(layout.slot_source_S[layout.token_slot_N], torch.arange(N))


def test_tiles_hold_neighbouring_positions():
    grid, tile = (3, 5, 7), (2, 2, 3)
    layout = make_tile_layout(grid, tile)
    T, H, W = grid
    for m in range(layout.num_tiles):
        ti, hi, wi = layout.tile_coords_M3[m].tolist()
        src = layout.slot_source_S[m * layout.block : m * layout.block + int(layout.valid_len_M[m])]
        t, h, w = src // (H * W), (src // W) % H, src % W
        assert torch.all(t // tile[0] == ti) and torch.all(h // tile[1] == hi) and torch.all(w // tile[2] == wi)
        expected = sum(
            1
            for p in itertools.product(range(T), range(H), range(W))
            if (p[0] // 2, p[1] // 2, p[2] // 3) == (ti, hi, wi)
        )
        assert int(layout.valid_len_M[m]) == expected


def test_wan_shapes():
    layout = make_tile_layout((21, 30, 52), (2, 4, 4))
    assert layout.tiles_per_dim == (11, 8, 13) and layout.block == 32
    assert layout.num_tokens == 32760 and layout.num_slots == 11 * 8 * 13 * 32
    layout = make_tile_layout((21, 45, 80), (4, 4, 8))
    assert layout.tiles_per_dim == (6, 12, 10) and layout.block == 128
    assert block_size_for_tile((3, 3, 3)) == 32 and block_size_for_tile((1, 2, 2)) == 16


def test_layout_errors():
    with pytest.raises(ValueError, match="tile"):
        make_tile_layout((2, 2, 2), (0, 1, 1))
    layout = make_tile_layout((2, 2, 2), (1, 2, 2))
    with pytest.raises(ValueError, match="8 video tokens"):
        layout.to_tiles(torch.zeros(1, 7, 1, 1))


def test_window_mask_matches_bruteforce_with_border_shift():
    layout = make_tile_layout((6, 10, 14), (1, 2, 2))  # 6 x 5 x 7 tiles
    window = (1, 1, 2)
    mask = window_block_mask(layout, window)
    n = layout.tiles_per_dim
    coords = layout.tile_coords_M3.tolist()
    for i, ci in enumerate(coords):
        for j, cj in enumerate(coords):
            keep = True
            for a in range(3):
                lo = min(max(ci[a] - window[a], 0), max(n[a] - 2 * window[a] - 1, 0))
                keep &= lo <= cj[a] <= lo + 2 * window[a]
            assert bool(mask[i, j]) == keep, (ci, cj)
    assert torch.all(mask.sum(-1) == window_tile_count(layout, window))


def test_topk_mask_picks_highest_pooled_scores():
    torch.manual_seed(0)
    layout = make_tile_layout((3, 3, 5), (2, 2, 2))
    q_tiles = layout.to_tiles(torch.randn(1, 45, 2, 8)).transpose(1, 2)
    k_tiles = layout.to_tiles(torch.randn(1, 45, 2, 8)).transpose(1, 2)
    mask = topk_block_mask(q_tiles, k_tiles, layout, 3)
    assert mask.shape == (1, 2, layout.num_tiles, layout.num_tiles) and torch.all(mask.sum(-1) == 3)
    # Pool by hand from the frame-major tokens.
    valid = layout.slot_valid_S()
    for h in range(2):
        qp = torch.stack(
            [
                q_tiles[0, h, m * layout.block : (m + 1) * layout.block][
                    valid[m * layout.block : (m + 1) * layout.block]
                ].mean(0)
                for m in range(layout.num_tiles)
            ]
        )
        kp = torch.stack(
            [
                k_tiles[0, h, m * layout.block : (m + 1) * layout.block][
                    valid[m * layout.block : (m + 1) * layout.block]
                ].mean(0)
                for m in range(layout.num_tiles)
            ]
        )
        scores = qp @ kp.T
        kth = scores.topk(3, dim=-1).values[:, -1:]
        assert torch.equal(mask[0, h], scores >= kth)


def test_lists_round_trip():
    torch.manual_seed(1)
    mask = torch.rand(2, 3, 5, 7) < 0.4
    index, count = mask_to_lists(mask)
    assert torch.equal(lists_to_mask(index, count, 7), mask)
    assert torch.equal(count, mask.sum(-1).int())
    bound = int(count.max())
    index_b, count_b = mask_to_lists(mask, bound)
    assert index_b.shape[-1] == bound and torch.equal(lists_to_mask(index_b, count_b, 7), mask)
    # Lists are ascending over the selected blocks.
    for b, h, m in itertools.product(range(2), range(3), range(5)):
        sel = index[b, h, m, : count[b, h, m]]
        assert torch.equal(sel.long(), mask[b, h, m].nonzero().flatten())
