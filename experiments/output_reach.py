"""How much of a model's denoising error its transformer's output projection can reach at all.

    python experiments/output_reach.py MODEL [--clips 24] [--json]

A `WanTransformer3DModel` predicts each token's p_t·p_h·p_w·C latent values as one linear map of its hidden state
(`proj_out`, hidden → values). When there are more values than hidden channels, every prediction lies in the
projection's column space, and whatever part of the target is outside it cannot be learned. On the held-out
clips (rendered, encoded with the model's VAE, noised at each σ with a fixed generator) this prints, per σ: the
flow-matching error ‖v_θ − (ε − x0)‖² per value, the share of that error outside the column space, and the share
of the target itself outside it. A model whose error is mostly unreachable cannot denoise however long it trains.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from vidpost.config import ArgumentParser

SIGMAS = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95)


def patchify(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, C, F, H, W] → [B, tokens, p_t·p_h·p_w·C] in the order of `WanTransformer3DModel.proj_out`'s outputs."""
    pt, ph, pw = patch
    b, c, f, h, w = x.shape
    x = x.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, -1, pt * ph * pw * c)


@torch.no_grad()
def output_reach(adapter: Any, latents: torch.Tensor, cond: Any, sigmas=SIGMAS, seed: int = 0) -> list[dict]:
    """Per σ: `mse`, `error_outside` and `target_outside` (fractions of energy) for clean `latents` [B, C, F, H, W]
    with prompt embeddings `cond` (module doc)."""
    tr = adapter.transformer
    patch = tuple(tr.config.patch_size)
    basis, _ = torch.linalg.qr(tr.proj_out.weight.detach().float())  # [values, min(values, hidden)]
    g = torch.Generator().manual_seed(seed)

    def outside(v: torch.Tensor) -> float:
        return float((v - (v @ basis) @ basis.T).pow(2).sum() / v.pow(2).sum())

    rows = []
    for s in sigmas:
        eps = torch.randn(latents.shape, generator=g)
        xt = (1 - s) * latents + s * eps
        pred = adapter.forward_transformer(xt, torch.full((len(latents),), float(s)), cond, 1.0).float()
        target = patchify(eps - latents, patch)
        err = patchify(pred, patch) - target

        rows.append(
            {
                "sigma": s,
                "mse": float(err.pow(2).mean()),
                "error_outside": outside(err),
                "target_outside": outside(target),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    from vidpost.models import load
    from vidpost.shapes.splits import heldout_prompts, render_heldout

    p = ArgumentParser(prog="python experiments/output_reach.py", description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    adapter = load(args.model)
    items = heldout_prompts()[: args.clips]
    clips = torch.from_numpy(render_heldout(items)[1])
    with torch.no_grad():
        latents = torch.cat([adapter.encode_video(clips[i : i + 8].float()) for i in range(0, len(clips), 8)])
        cond = adapter.encode_prompt([it["caption"] for it in items])
    rows = output_reach(adapter, latents, cond)
    proj = adapter.transformer.proj_out.weight
    if args.json:
        print(json.dumps({"model": args.model, "proj_out": list(proj.shape), "rows": rows}))
        return 0
    print(
        f"{args.model}: {len(items)} held-out clips, latents {tuple(latents.shape[1:])}, proj_out {tuple(proj.shape)}"
    )
    print(f"{'sigma':>6s}{'mse':>9s}{'error outside':>15s}{'target outside':>16s}")
    for r in rows:
        print(f"{r['sigma']:6.2f}{r['mse']:9.4f}{r['error_outside']:15.2f}{r['target_outside']:16.2f}")
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
