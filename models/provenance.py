"""Where a LoRA comes from: the base model it was trained on, recorded in the LoRA file itself.

A LoRA only means something on the base it was trained on. `stamp_lora` writes three entries into the safetensors
header of `pytorch_lora_weights.safetensors` (stock diffusers ignores them):

    vidpost.base_model        the base folder's name with its parent ("shapes/base")
    vidpost.base_path         the base folder, resolved, on the machine that trained it
    vidpost.base_fingerprint  `model_fingerprint(base)`

`lora_base_mismatch(lora, model_dir)` compares them with the model a LoRA is about to be applied to and returns a
one-line warning naming both, or None. A LoRA written before the stamp existed is checked by its `base_model.txt`.

The fingerprint is a sampled hash, so that it costs milliseconds on a 14B model: sha256 over the transformer's
`config.json`, and for each of its safetensors files the size, the header (every tensor's name, dtype, shape and
offset) and 16 evenly spaced 4 KiB windows of the data. Two fine-tunes of one base differ in every window.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from safetensors.torch import load_file, save_file

LORA_FILE = "pytorch_lora_weights.safetensors"
WINDOWS = 16
WINDOW_BYTES = 4096


def _sample_file(h: hashlib._Hash, f: Path) -> None:
    size = f.stat().st_size
    h.update(f"{f.name}|{size}".encode())
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return
        (n,) = struct.unpack("<Q", head)
        h.update(fh.read(min(n, size)))
        start = 8 + n
        span = max(0, size - start - WINDOW_BYTES)
        for i in range(WINDOWS):
            fh.seek(start + span * i // max(1, WINDOWS - 1))
            h.update(fh.read(WINDOW_BYTES))


def model_fingerprint(model_dir: str | Path) -> str:
    """A short hash of a diffusers model folder's transformer (config and weights, sampled; see the docstring)."""
    folder = Path(model_dir) / "transformer"
    h = hashlib.sha256()
    config = folder / "config.json"
    if config.exists():
        h.update(json.dumps(json.loads(config.read_text()), sort_keys=True).encode())
    for f in sorted(folder.glob("*.safetensors")):
        _sample_file(h, f)
    return h.hexdigest()[:16]


def model_name(model_dir: str | Path) -> str:
    p = Path(model_dir).resolve()
    return f"{p.parent.name}/{p.name}"


def stamp_lora(lora_dir: str | Path, base_dir: str | Path) -> None:
    """Record `base_dir` in the header of the LoRA file in `lora_dir` (weights unchanged)."""
    f = Path(lora_dir) / LORA_FILE
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as fh:
        metadata = dict(fh.metadata() or {})
    metadata |= {
        "vidpost.base_model": model_name(base_dir),
        "vidpost.base_path": str(Path(base_dir).resolve()),
        "vidpost.base_fingerprint": model_fingerprint(base_dir),
    }
    save_file(load_file(str(f)), str(f), metadata=metadata)


LORA_KEY_MARKS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora.down", "lora.up")
"""a tensor name with one of these is a LoRA weight (peft / diffusers, kohya)"""


def check_lora_file(lora: str | Path) -> Path:
    """The LoRA file of `lora` (a folder with `LORA_FILE`, or a file) → its path, after checking that it is a
    safetensors file holding LoRA weights: anything else (a pickle, text, a full model's weights under the LoRA's
    name, which diffusers would skip and sample the base model) is a one-line ValueError naming the file."""
    from safetensors import safe_open

    lora = Path(lora)
    f = lora / LORA_FILE if lora.is_dir() else lora
    if not f.is_file():
        raise ValueError(f"LoRA {lora}: {'no ' + LORA_FILE + ' in that folder' if lora.is_dir() else 'no such file'}")
    try:
        with safe_open(str(f), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as e:  # SafetensorError: a pickle, text, JSON, a truncated file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"LoRA {f}: not a safetensors file ({first})") from None
    if not any(m in k for k in keys for m in LORA_KEY_MARKS):
        example = f" such as '{keys[0]}'" if keys else ""
        raise ValueError(
            f"LoRA {f}: no LoRA weights in that file ({len(keys)} tensors{example}); a full model is given with --model"
        )
    return f


def lora_base(lora: str | Path) -> dict[str, str]:
    """The base recorded with a LoRA (folder or file): {"name", "fingerprint"?, "path"?}; {} when none is."""
    lora = Path(lora)
    f = lora / LORA_FILE if lora.is_dir() else lora
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as fh:
        metadata = fh.metadata() or {}
    if "vidpost.base_fingerprint" in metadata:
        return {
            "name": metadata.get("vidpost.base_model", "?"),
            "path": metadata.get("vidpost.base_path", ""),
            "fingerprint": metadata["vidpost.base_fingerprint"],
        }
    legacy = f.parent / "base_model.txt"
    if legacy.exists():
        path = legacy.read_text().strip()
        return {"name": model_name(path), "path": path}
    return {}


def lora_base_mismatch(lora: str | Path, model_dir: str | Path) -> str | None:
    """A warning naming both models when `lora` was trained on another base than `model_dir`, else None."""
    base = lora_base(lora)
    if not base:
        return None
    if "fingerprint" in base:
        same = base["fingerprint"] == model_fingerprint(model_dir)
    else:
        same = Path(base["path"]).resolve() == Path(model_dir).resolve()
    if same:
        return None
    return (
        f"the LoRA {lora} was trained on '{base['name']}' but is applied to '{model_name(model_dir)}' "
        f"({Path(model_dir).resolve()}); pass the base it was trained on with --model"
    )
