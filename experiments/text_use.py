"""At which noise levels a model uses one attribute of its prompt: the denoising loss with the true caption vs
a caption with that attribute changed.

    python experiments/text_use.py MODEL [--attribute direction|colour] [--clips 64] [--json]

On the held-out clips (rendered with their seeds, encoded with the model's VAE) whose scenes allow the change
(for `direction`: every object moves; each direction is reversed, left ↔ right, up-left ↔ down-right, …; for
`colour`: every object takes the next palette colour not in the scene), each clip is noised at each σ with one
fixed noise and the flow-matching loss ‖v_θ(x_σ, σ, text) − (ε − x0)‖² is measured with the true and with the
changed caption. Per σ it prints both losses, the mean relative gap (changed − true) / true and the share of clips
whose true caption has the lower loss. A model that has learned an attribute as a generative factor prefers the
true caption at the noise levels where samples decide it (high σ for where objects go); one that only uses it to
refine what the noisy clip already shows prefers it at low σ alone. The sampler settles an object's trajectory
at σ ≳ 0.8 (`results/shapes-ceiling/README.md` has the Shapes models' table).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from vidpost.config import ArgumentParser

SIGMAS = (0.2, 0.4, 0.6, 0.8, 0.9, 0.97)
_REVERSE = {"left": "right", "up": "down", "up-left": "down-right", "up-right": "down-left"}
REVERSE = {**_REVERSE, **{v: k for k, v in _REVERSE.items()}}


def change(spec: dict[str, Any], attribute: str) -> dict[str, Any] | None:
    """`spec` (a `SceneSpec.to_dict()`) with `attribute` changed for every object, or None when the scene does not
    allow it (a still object for `direction`)."""
    from vidpost.shapes.world import COLOURS

    out = json.loads(json.dumps(spec))
    objects = out["objects"]
    if attribute == "direction":
        if any(o["direction"] not in REVERSE for o in objects):
            return None
        for o in objects:
            o["direction"] = REVERSE[o["direction"]]
    elif attribute == "colour":
        used = {o["colour"] for o in objects}
        free = [c for c in COLOURS if c not in used]
        for o, c in zip(objects, free):
            o["colour"] = c
    else:
        raise ValueError(f"unknown attribute {attribute!r}; expected 'direction' or 'colour'")
    return out


@torch.no_grad()
def text_use(
    adapter: Any, latents: torch.Tensor, true: list[str], changed: list[str], sigmas=SIGMAS, seed: int = 0
) -> list[dict[str, float]]:
    """Per σ: `loss_true`, `loss_changed`, `gap` (mean relative) and `prefers_true` (share of clips) for clean
    `latents` [B, C, F, H, W] and their true / changed captions (module doc)."""
    cond_true, cond_changed = adapter.encode_prompt(true), adapter.encode_prompt(changed)
    eps = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for s in sigmas:
        sigma = torch.full((len(latents),), float(s))
        xt = (1 - s) * latents + s * eps
        target = eps - latents
        per_clip = []
        for cond in (cond_true, cond_changed):
            pred = adapter.forward_transformer(xt, sigma, cond, 1.0).float()
            per_clip.append((pred - target).pow(2).flatten(1).mean(1))
        lt, lc = per_clip
        rows.append(
            {
                "sigma": s,
                "loss_true": float(lt.mean()),
                "loss_changed": float(lc.mean()),
                "gap": float(((lc - lt) / lt).mean()),
                "prefers_true": float((lt < lc).float().mean()),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    from vidpost.models import load
    from vidpost.shapes.captions import caption
    from vidpost.shapes.splits import heldout_prompts, render_heldout
    from vidpost.shapes.world import SceneSpec

    p = ArgumentParser(prog="python experiments/text_use.py", description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--attribute", choices=["direction", "colour"], default="direction")
    p.add_argument("--clips", type=int, default=64, help="held-out prompts to draw from (those that allow the change)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    adapter = load(args.model)
    pairs = [(it, change(it["spec"], args.attribute)) for it in heldout_prompts()[: args.clips]]
    pairs = [(it, spec) for it, spec in pairs if spec is not None]
    if not pairs:
        p.error(f"none of the first {args.clips} held-out scenes allows changing {args.attribute}")
    items = [it for it, _ in pairs]
    true = [it["caption"] for it in items]
    changed = [caption(SceneSpec.from_dict(spec)) for _, spec in pairs]
    clips = torch.from_numpy(render_heldout(items)[1])
    with torch.no_grad():
        latents = torch.cat([adapter.encode_video(clips[i : i + 8].float()) for i in range(0, len(clips), 8)])
    rows = text_use(adapter, latents, true, changed)
    if args.json:
        print(json.dumps({"model": args.model, "attribute": args.attribute, "clips": len(items), "rows": rows}))
        return 0
    print(f"{args.model}: {len(items)} held-out clips, {args.attribute} changed (e.g. {true[0]!r} -> {changed[0]!r})")
    print(f"{'sigma':>6s}{'loss true':>11s}{'changed':>10s}{'gap':>9s}{'prefers true':>14s}")
    for r in rows:
        print(
            f"{r['sigma']:6.2f}{r['loss_true']:11.4f}{r['loss_changed']:10.4f}{r['gap']:+9.2%}{r['prefers_true']:14.2f}"
        )
    return 0


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
