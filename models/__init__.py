"""Model adapters (one per family over diffusers classes), loading by path or preset, and sampling.

`load(path_or_preset)` takes a local diffusers-format directory (the family is read from `model_index.json`'s
`_class_name`) or the name of a shipped preset (`shapes`, `shapes-base`: the Shapes world models in `assets/`).
A folder with a `lit.json` (a distilled LiT student, `vidpost.models.lit`) gets its linear attention reinstalled; one with
a `quant.json` (`vidpost quantize`) gets its low-precision linear layers (`vidpost.models.quant`).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from .base import ModelPathError, PromptEmbeds, VideoModelAdapter, read_vidpost_config
from .hunyuan_video import HunyuanVideoAdapter
from .lit import LIT_CONFIG, install_lit_from_folder
from .provenance import LORA_FILE, check_lora_file, lora_base_mismatch
from .quant import QUANT_CONFIG
from .sampling import SCHEDULES
from .wan import WanAdapter

FAMILIES: dict[str, type[VideoModelAdapter]] = {"wan": WanAdapter, "hunyuan_video": HunyuanVideoAdapter}


def assets_dir() -> Path:
    """The shipped assets folder (override with $VIDPOST_ASSETS)."""
    env = os.environ.get("VIDPOST_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "assets"


PRESETS: dict[str, str] = {
    "shapes": "shapes/sft",
    "shapes-base": "shapes/base",
    "shapes-rl": "shapes/rl",
    "shapes-fast": "shapes/fast",
}
"""Preset name → folder under assets/."""

PRESET_SOURCES: dict[str, str] = {
    "shapes": "`make shapes-models` (which trains it with vidpost's own commands)",
    "shapes-base": "`make shapes-models` (which trains it with vidpost's own commands)",
    "shapes-rl": "`make rl-shapes` (the RL algorithms compared from `shapes`; the best run is merged with "
    "`vidpost merge-lora`)",
    "shapes-fast": "`make distill-fast-shapes` (a 4-step DMD2 student of `shapes-rl`; its final/ is shipped)",
}

DEFAULT_MODEL = "shapes"


def resolve_model_path(path_or_preset: str | os.PathLike) -> Path:
    """A preset name or a path → an existing directory, or ModelPathError saying what to do."""
    s = str(path_or_preset)
    if s in PRESETS:
        p = assets_dir() / PRESETS[s]
        if not (p / "model_index.json").exists():
            raise ModelPathError(
                f"the '{s}' preset (a shipped Shapes world model) is not present at {p}. It is produced by "
                f"{PRESET_SOURCES[s]} and shipped in assets/; until then pass --model PATH to a local "
                "diffusers-format model directory."
            )
        return p
    p = Path(s).expanduser()
    if not p.exists():
        presets = ", ".join(sorted(PRESETS))
        raise ModelPathError(f"model path {p} does not exist (and is not a preset name: {presets})")
    return p


def family_of(path: Path) -> type[VideoModelAdapter]:
    index_file = path / "model_index.json"
    if not index_file.exists():
        raise ModelPathError(f"{path} is not a diffusers-format model folder: missing model_index.json")
    name = json.loads(index_file.read_text()).get("_class_name")
    for cls in FAMILIES.values():
        if name in cls.pipeline_class_names:
            return cls
    known = sorted(n for c in FAMILIES.values() for n in c.pipeline_class_names)
    raise ModelPathError(f"{path}: unsupported pipeline class {name!r} in model_index.json (supported: {known})")


class LoraBaseMismatch(UserWarning):
    """A LoRA is applied to another base model than the one it was trained on."""

    one_line = True  # the CLI prints it as one `warning: ...` line


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].strip()


def load(
    path_or_preset: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    lora: str | os.PathLike | None = None,
) -> VideoModelAdapter:
    """Load a local diffusers-format directory (or a preset) as the right family's adapter, frozen, in eval mode.

    `lora`: a folder (or file) with a diffusers-format LoRA (`pytorch_lora_weights.safetensors`, as the stages
    write it) applied to the transformer. A LiT student folder (`lit.json`) comes back with "lit" installed.
    """
    path = resolve_model_path(path_or_preset)
    family = family_of(path)
    try:
        adapter = family.from_pretrained(path, dtype=dtype, device=device)
    except OSError as e:  # diffusers / transformers report an unreadable weight file as OSError
        raise ModelPathError(
            f"{path}: {_first_line(e)} (a weight file may be truncated or corrupt: re-export or re-download it)"
        ) from None
    schedule = read_vidpost_config(path).get("schedule")
    if schedule is not None:  # the σ schedule this model samples on (a few-step student's), over its family's
        if schedule not in SCHEDULES:
            raise ModelPathError(f"{path}: vidpost.json names an unknown schedule {schedule!r} (known: {SCHEDULES})")
        adapter.schedule = schedule
    if (path / LIT_CONFIG).exists():
        install_lit_from_folder(adapter, path)
    if lora is not None:
        lora = Path(lora)
        if not lora.exists():
            raise ModelPathError(f"LoRA path {lora} does not exist")
        if lora.is_dir() and not (lora / LORA_FILE).exists():
            raise ModelPathError(f"LoRA folder {lora} has no {LORA_FILE}")
        check_lora_file(lora)
        mismatch = lora_base_mismatch(lora, path)
        if mismatch:
            warnings.warn(mismatch, LoraBaseMismatch, stacklevel=2)
        try:
            adapter.transformer.load_lora_adapter(str(lora), prefix="transformer", use_safetensors=True)
        except OSError as e:
            raise ModelPathError(f"LoRA {lora}: {_first_line(e)}") from None
        adapter.transformer.requires_grad_(False)
    if (path / QUANT_CONFIG).exists():  # a quantised model folder (`vidpost quantize`): its recipe is re-applied
        from .quant import install_quant_from_folder

        adapter.quant_report = install_quant_from_folder(adapter, path)
    return adapter


__all__ = [
    "FAMILIES",
    "HunyuanVideoAdapter",
    "LoraBaseMismatch",
    "ModelPathError",
    "PromptEmbeds",
    "VideoModelAdapter",
    "WanAdapter",
    "assets_dir",
    "load",
    "resolve_model_path",
]
