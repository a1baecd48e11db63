"""Side-by-side tables (`vidpost compare`; `shapes eval`, `distill eval` and `quantize eval` are presets of it): rows
of (model, sampling settings, prompt text) on the Shapes world's held-out scenes, one table, the same columns and
the same paired statistics.

A row is written `MODEL[+LORA][@key=value,key=value...]`:

    shapes                                   the shipped SFT model at its own settings
    shapes+runs/rl/final                     with a LoRA
    shapes-fast@steps=2                      a few-step student at 2 steps
    shapes@quant=configs/quant/nvfp4.yaml    quantised by a recipe in this process (a quantised folder: just MODEL)
    shapes@enhance=zero-shot                 the user-style prompts rewritten by an enhancer (`zero-shot` or a folder)
    shapes@prompts=prompt_user               the user-style prompts as they are (default: the canonical captions)
    keys: steps, guidance, shift, frames, height, width, keyframe, quant, enhance, prompts, label

Every row samples the same scenes from the same noises (video k of scene i: the scene's seed + k·SEED_STRIDE,
`vidpost.seeding`), so the deltas to the first row are paired and PSNR compares each clip with the first row's clip
from the same noise; the verifier always scores a video against the scene's spec, never against a rewrite.

Column groups (`columns`): quality (always: success with its 95% Wilson interval, graded with its 95% t interval,
the paired graded delta to the first row with its interval, the success delta), attributes (the verifier's
per-attribute means), temporal (temporal consistency), speed (transformer evaluations per clip, the sampler's
seconds per clip without and with the VAE decode, speed-ups vs the first row; rows run one after the other in one
process), quant (PSNR vs the first row, packed transformer weights and their ratio to bf16, the same recipe on the
Wan2.1-T2V-1.3B architecture, the layers' path).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from vidpost.evaluation.settings import resolve_settings
from vidpost.evaluation.shapes import ATTRIBUTES, parse_model, score_row
from vidpost.evaluation.stats import paired_cells

COLUMN_GROUPS = ("quality", "attributes", "temporal", "speed", "quant")


@dataclass
class RowSpec:
    """One row (module docstring)."""

    model: str
    label: str = ""
    steps: int | None = None
    guidance: float | None = None
    shift: float | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    keyframe: str | None = None
    quant: str | None = None
    """a recipe YAML applied and calibrated in this process (`vidpost quantize`)"""
    enhance: str | None = None
    """rewrite the user-style prompts first: "zero-shot" (the default enhancer) or a rewriter folder"""
    prompts: str = "caption"
    """the text sampled: "caption" (canonical) or "prompt_user" (the user-style prompt of the same scene)"""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prompts not in ("caption", "prompt_user"):
            raise ValueError(f"row {self.model}: prompts must be caption or prompt_user, got {self.prompts!r}")
        if not self.label:
            settings = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name not in ("model", "label",
                        "extra") and getattr(self, f.name) not in (None, "caption")]  # fmt: skip
            self.label = self.model + (f"@{','.join(settings)}" if settings else "")


def parse_row(text: str) -> RowSpec:
    """`MODEL[+LORA][@key=value,...]` → a RowSpec; an unknown key or a bad value is one ValueError naming it."""
    model, _, rest = text.partition("@")
    kinds = {f.name: f.type for f in fields(RowSpec) if f.name not in ("model", "extra")}
    values: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in kinds:
            raise ValueError(f"row {text!r}: {part!r} is not key=value with a key of {', '.join(kinds)}")
        kind = kinds[key]
        try:
            values[key] = int(value) if "int" in str(kind) else float(value) if "float" in str(kind) else value
        except ValueError:
            raise ValueError(f"row {text!r}: {key}={value!r} is not a number") from None
        if isinstance(values[key], float) and not math.isfinite(values[key]):
            raise ValueError(f"row {text!r}: {key}={value!r} is not a finite number")
    if not model:
        raise ValueError(f"row {text!r} names no model")
    return RowSpec(model, **values)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def load_plain(row: RowSpec) -> tuple[Any, Path, Any]:
    """(the row's adapter, its model folder, its quantisation report or None) for a row without a recipe to apply (a
    quantised folder loads quantised); `vidpost compare` also applies `quant=` recipes."""
    from vidpost.models import load, resolve_model_path

    if row.quant:
        raise ValueError(f"row {row.label}: quant= recipes are applied by the compare command's loader")
    base, lora = parse_model(row.model)
    path = resolve_model_path(base)
    adapter = load(path, lora=lora)
    return adapter, path, getattr(adapter, "quant_report", None)


def texts_for(row: RowSpec, items: list[dict[str, Any]], device: str = "cpu") -> tuple[list[str], list[dict] | None]:
    """The text sampled for each scene: its caption, its user-style prompt, or that prompt's rewrite (→ the rewrites'
    records too)."""
    if row.enhance is None:
        return [it[row.prompts] for it in items], None
    from vidpost.enhance import Rewriter

    rewriter = Rewriter.from_pretrained(None if row.enhance == "zero-shot" else row.enhance, device=device)
    users = [it["prompt_user"] for it in items]
    rewrites = rewriter.rewrite(users)
    records = [{"text": r.text, "fallback": r.fallback_reason} for r in rewrites]
    return [r["text"] for r in records], records


def evaluate(
    rows: list[RowSpec],
    items: list[dict[str, Any]],
    *,
    seeds: int = 2,
    batch_size: int = 16,
    load_row: Any = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Sample and score every row on `items` (module docstring) → one dict per row: its spec and settings, the
    per-clip `success`, `score`, `temporal`, per-attribute lists, `psnr` vs the first row, the sampler's seconds.
    `load_row(row) → (adapter, model folder, quant report or None)` overrides how a row's model is made."""
    from vidpost.rewards.base import build_reward

    temporal = build_reward("temporal")
    reference: dict[tuple[int, int], torch.Tensor] = {}
    out: list[dict[str, Any]] = []
    for n, row in enumerate(rows):
        adapter, path, report = (load_row or load_plain)(row)
        settings = resolve_settings(
            path,
            adapter,
            steps=row.steps,
            guidance=row.guidance,
            shift=row.shift,
            num_frames=row.frames,
            height=row.height,
            width=row.width,
            keyframe=row.keyframe,
        )
        texts, rewrites = texts_for(row, items, device)
        psnrs: list[float] = []

        def on_batch(k: int, idx: list[int], videos: torch.Tensor, psnrs=psnrs, first=n == 0) -> None:
            for j, i in enumerate(idx):
                if first:
                    reference[(k, i)] = videos[j].clone()
                else:
                    psnrs.append(_psnr(videos[j], reference[(k, i)]))

        rec: dict[str, Any] = {"label": row.label, "model": row.model, "steps": settings.steps}
        rec |= {"guidance": settings.guidance, "schedule": adapter.schedule, "settings": settings.record()}
        rec["evals_per_clip"] = settings.steps * (2 if adapter.uses_cfg(settings.guidance) else 1)
        rec |= score_row(
            adapter, settings, items, texts=texts, seeds=seeds, batch_size=batch_size, temporal=temporal,
            on_batch=on_batch,
        )  # fmt: skip
        rec["psnr"] = psnrs
        rec["rewrites"] = rewrites
        rec["quant"] = _quant_columns(adapter, report)
        out.append(rec)
        print(f"{row.label}: {paired_cells(rec, out[0])['success']}, graded {paired_cells(rec, out[0])['graded']}",
              file=sys.stderr)  # fmt: skip
        del adapter
    return out


def _quant_columns(adapter: Any, report: Any) -> dict[str, Any]:
    from vidpost.models.architectures import meta_transformer
    from vidpost.models.quant import packed_bytes

    if report is None:
        n = sum(p.numel() for p in adapter.transformer.parameters())
        return {"recipe": "—", "weight_bytes": 2.0 * n, "ratio": 1.0, "wan_ratio": 1.0, "path": "—"}
    packed, bf16 = packed_bytes(meta_transformer("wan2.1-t2v-1.3b"), report.spec)
    return {
        "recipe": report.recipe,
        "weight_bytes": report.weight_bytes,
        "ratio": report.ratio,
        "wan_ratio": packed / bf16,
        "path": ", ".join(sorted(set(report.backend_used.values()))),
    }


def _cells(row: dict[str, Any], ref: dict[str, Any], columns: tuple[str, ...]) -> list[str]:
    n = len(row["success"])
    c = paired_cells(row, ref)
    cells = [c["success"], c["graded"], c["delta"], c["delta_success"]]
    if "attributes" in columns:
        cells += [f"{sum(row['attributes'][a]) / n:.3f}" for a in ATTRIBUTES if a != "score"]
    if "temporal" in columns:
        cells.append(f"{sum(row['temporal']) / n:.4f}")
    if "speed" in columns:
        per_clip, ref_clip = row["seconds"] / n, ref["seconds"] / len(ref["success"])
        denoise = (row["seconds"] - row["decode_seconds"]) / n
        ref_denoise = (ref["seconds"] - ref["decode_seconds"]) / len(ref["success"])
        cells += [str(row["evals_per_clip"]), f"{denoise:.3f}", f"{ref_denoise / denoise:.1f}×", f"{per_clip:.3f}",
                  f"{ref_clip / per_clip:.1f}×"]  # fmt: skip
    if "quant" in columns:
        q = row["quant"]
        cells.append("—" if row is ref else f"{sum(row['psnr']) / len(row['psnr']):.1f}")
        cells += [f"{q['weight_bytes'] / 1e6:.2f} MB ({q['ratio']:.2f}×)", f"{q['wan_ratio']:.3f}×", q["path"]]
    return cells


def markdown(rows: list[dict[str, Any]], columns: tuple[str, ...] = ("quality",), n_prompts: int | None = None,
             seeds: int | None = None) -> str:  # fmt: skip
    """The table of `rows` (`evaluate`'s) with the column groups `columns` (module docstring)."""
    unknown = [c for c in columns if c not in COLUMN_GROUPS]
    if unknown:
        raise ValueError(f"unknown column group {unknown[0]!r}; groups: {', '.join(COLUMN_GROUPS)}")
    ref = rows[0]
    head = ["row", "steps", "guidance", "success (95% CI)", "graded (95% CI)", f"Δ graded vs {ref['label']} (95% CI)",
            "Δ success (pts)"]  # fmt: skip
    if "attributes" in columns:
        head += [a for a in ATTRIBUTES if a != "score"]
    if "temporal" in columns:
        head.append("temporal")
    if "speed" in columns:
        head += [
            "transformer evals / clip",
            "s / clip, denoising",
            "speed-up",
            "s / clip, with VAE decode",
            "speed-up",
        ]
    if "quant" in columns:
        head += ["PSNR vs row 1 (dB)", "transformer weights", "Wan2.1-1.3B vs bf16 (computed)", "path"]
    clips = len(ref["success"])
    about = f"{clips} held-out clips" + (f" ({n_prompts} scenes × {seeds} seeds" if n_prompts else " (")
    lines = [about + ", the same noises in every row; Δ: paired with the first row).", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"], str(row["steps"]), f"{row['guidance']:g}", *_cells(row, ref, columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
