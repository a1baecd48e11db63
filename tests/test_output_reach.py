"""`experiments/output_reach.py`: the share of a transformer's denoising error outside its output
projection's column space — zero when a token has no more values than hidden channels, most of it when it has
many more (the reason the Shapes VAE has 4 latent channels)."""

from __future__ import annotations

import torch
from output_reach import output_reach, patchify

from vidpost.models import WanAdapter


def test_patchify_matches_the_transformers_unpatchify():
    """Our token layout is the inverse of the one `WanTransformer3DModel.forward` unpatchifies with: a `proj_out`
    that emits its value index as a constant recovers those indices in order in every patchified token."""
    adapter = WanAdapter.tiny(0, latent_channels=4, patch_size=(1, 2, 2))
    tr = adapter.transformer
    x = torch.randn(1, 4, 2, 4, 4)
    with torch.no_grad():
        tr.proj_out.weight.zero_()
        tr.proj_out.bias.copy_(torch.arange(tr.proj_out.out_features, dtype=torch.float32))
    out = adapter.forward_transformer(x, torch.tensor([0.5]), adapter.encode_prompt(["a"]), 1.0)
    tokens = patchify(out, (1, 2, 2))
    assert tokens.shape == (1, 2 * 2 * 2, 16)
    assert torch.equal(tokens[0], torch.arange(16.0).expand(8, 16))


def test_unreachable_error_appears_only_with_more_values_than_hidden_channels():
    latents = torch.randn(4, 4, 2, 8, 8)
    for patch, values in (((1, 1, 1), 4), ((1, 4, 4), 64)):
        adapter = WanAdapter.tiny(0, latent_channels=4, patch_size=patch)  # hidden 2 heads x 12 = 24
        cond = adapter.encode_prompt(["a red circle"] * 4)
        rows = output_reach(adapter, latents, cond, sigmas=(0.2, 0.8))
        for row in rows:
            assert row["mse"] > 0
            if values <= 24:
                assert row["error_outside"] < 1e-6 and row["target_outside"] < 1e-6
            else:  # 40 of 64 dimensions unreachable: roughly that share of a random target and of the error
                assert 0.4 < row["target_outside"] < 0.8 and row["error_outside"] > 0.4
