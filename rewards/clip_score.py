"""CLIP score, and the CLIP loader the other CLIP-based rewards share (HPS, PickScore, aesthetic, temporal).

`clip` — text–video alignment: the cosine between the CLIP image embedding of each scored frame and the CLIP text
embedding of the prompt, averaged over `frames` evenly spaced frames. The score is the raw cosine (in [-1, 1],
typically 0.2–0.35 for a matching pair with real CLIP models), not Hessel et al.'s rescaled 2.5·max(cos, 0);
component `clip` holds the same value.

`load_clip(path, arch=...)` detects the checkpoint kind from the path:

  * a directory with `config.json` — a transformers `CLIPModel` (`save_pretrained` layout: `config.json`,
    `model.safetensors` or `pytorch_model.bin`, tokenizer files, optionally `preprocessor_config.json`, whose
    `image_mean` / `image_std` / `size` are used; CLIP's defaults otherwise). `processor_path` may name another
    folder holding the tokenizer and preprocessor files (PickScore's reference code takes its processor from
    the LAION ViT-H-14 repository).
  * a directory with `open_clip_config.json` — an open_clip Hub-style folder (`{"model_cfg", "preprocess_cfg"}`
    plus `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`).
  * a file — open_clip weights (`.safetensors`, or `.pt` / `.bin` / `.pth` read with `torch.load(weights_only=True)`,
    a bare state dict or `{"state_dict": ...}`); `arch` names the architecture: an open_clip model name
    ("ViT-B-32", "ViT-H-14", "ViT-L-14-quickgelu" for OpenAI's weights) or the path of a JSON model config (a bare
    `{"embed_dim", "vision_cfg", "text_cfg"}` or an `open_clip_config.json`).

Images are preprocessed in torch like the reference processors (bicubic resize of the short side, centre crop,
mean/std normalisation), so the rewards stay differentiable-friendly and never round-trip through PIL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    CLIP_MEAN,
    CLIP_STD,
    Reward,
    RewardOutput,
    RewardPathError,
    normalize,
    register,
    require_files,
    resize_frames,
    select_frames,
)

__all__ = ["ClipBackbone", "ClipScore", "load_clip", "load_state_dict_file"]

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
HF_TOKENIZER = ("tokenizer.json", "vocab.json")
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors` or a torch file (loaded with `weights_only=True`; never unpickles code).
    A `{"state_dict": ...}` / `{"model": ...}` wrapper and a DistributedDataParallel `module.` prefix are removed."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path), device="cpu")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # re-raised with the file name and why it cannot be read
            raise ValueError(
                f"{path}: cannot be read as a torch state dict with weights_only=True ({type(e).__name__}: {e}); "
                "convert it to .safetensors"
            ) from e
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (optionally under 'state_dict')")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


class ClipBackbone(nn.Module):
    """A CLIP model of either kind behind one interface: `encode_images` (images [N, 3, H, W] in [0, 1]) and
    `encode_texts` (prompts) return unnormalised float32 embeddings [N, D]; `logit_scale` is the learned scale."""

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        tokenizer: Any,
        *,
        image_size: int | tuple[int, int],
        resize_size: int | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        context_length: int = 77,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("transformers", "open_clip"):
            raise ValueError(f"unknown CLIP kind {kind!r}")
        self.model, self.kind, self.tokenizer = model.eval().requires_grad_(False), kind, tokenizer
        if isinstance(image_size, Sequence) and not isinstance(image_size, str):
            h, w = image_size
            image_size = h if h == w else (h, w)
        self.image_size = image_size
        self.resize_size = resize_size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.context_length = context_length
        self.embed_dim = embed_dim

    @property
    def param_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().reshape(())

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] → normalised model input (short-side resize, centre crop)."""
        size = self.image_size
        if isinstance(size, int) and self.resize_size and self.resize_size != size:
            images = resize_frames(images, self.resize_size)
            h, w = images.shape[-2:]
            top, left = (h - size) // 2, (w - size) // 2
            images = images[..., top : top + size, left : left + size]
        else:
            images = resize_frames(images, size)
        return normalize(images, self.mean, self.std)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Already preprocessed pixels → image embeddings [N, D] (float32, not normalised)."""
        pixels = pixels.to(self.device, self.param_dtype)
        if self.kind == "transformers":
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            return self.model.visual_projection(pooled).float()
        return self.model.encode_image(pixels).float()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_pixels(self.preprocess(images))

    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        prompts = list(prompts)
        if self.kind == "transformers":
            tok = self.tokenizer(
                prompts, padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
            )
            pooled = self.model.text_model(
                input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
            ).pooler_output
            return self.model.text_projection(pooled).float()
        ids = self.tokenizer(prompts).to(self.device)
        return self.model.encode_text(ids).float()

    def cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Per-video mean over frames of cos(image, text): frames [B, K, 3, H, W] → [B]."""
        b, k = images.shape[:2]
        img = F.normalize(self.encode_images(images.flatten(0, 1)).view(b, k, -1), dim=-1)
        txt = F.normalize(self.encode_texts(prompts), dim=-1)
        return (img * txt[:, None]).sum(-1).mean(1)


def load_clip(
    path: str | Path | None,
    *,
    arch: str | None = None,
    processor_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    what: str = "clip",
) -> ClipBackbone:
    """Load a CLIP backbone from a transformers folder, an open_clip folder, or an open_clip weights file + `arch`
    (see the module docstring). Missing or incomplete paths raise `RewardPathError` naming the expected files."""
    p = require_files(path, ["config.json", "open_clip_config.json"], what, any_of=True)
    if p.is_dir() and (p / "config.json").exists():
        backbone = _load_transformers(p, processor_path, what)
    elif p.is_dir():
        backbone = _load_open_clip_dir(p, arch, what)
    else:
        if not arch:
            raise ValueError(
                f"{what}: {p} is a weights file, so it is read as open_clip weights and needs `arch` "
                "(an open_clip model name such as 'ViT-H-14', or a JSON model config path)"
            )
        backbone = _load_open_clip(p, arch, what)
    return backbone.to(device=device, dtype=dtype) if dtype is not None else backbone.to(device)


def _load_transformers(p: Path, processor_path: str | Path | None, what: str) -> ClipBackbone:
    from transformers import AutoTokenizer, CLIPModel

    require_files(p, HF_WEIGHTS, what, any_of=True)
    proc = require_files(p if processor_path is None else processor_path, HF_TOKENIZER, what, any_of=True)
    model = CLIPModel.from_pretrained(p, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(proc)
    size = int(model.config.vision_config.image_size)
    mean, std, resize = CLIP_MEAN, CLIP_STD, size
    pre = Path(proc) / "preprocessor_config.json"
    if not pre.exists():
        pre = p / "preprocessor_config.json"
    if pre.exists():
        cfg = json.loads(pre.read_text())
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        s = cfg.get("size")
        if isinstance(s, dict):
            s = s.get("shortest_edge", s.get("height"))
        if isinstance(s, int):
            resize = s
    context = int(model.config.text_config.max_position_embeddings)
    return ClipBackbone(
        model,
        "transformers",
        tokenizer,
        image_size=size,
        resize_size=resize,
        mean=mean,
        std=std,
        context_length=context,
        embed_dim=int(model.config.projection_dim),
    )


def open_clip_config(arch: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, preprocess config) for an open_clip model name, a JSON config file or an open_clip folder."""
    import open_clip

    p = Path(arch).expanduser()
    if p.is_dir():
        p = p / "open_clip_config.json"
    if p.suffix == ".json" or p.exists():
        if not p.is_file():
            raise RewardPathError(f"open_clip config {p} does not exist")
        raw = json.loads(p.read_text())
        model_cfg, pre_cfg = raw.get("model_cfg", raw), raw.get("preprocess_cfg", {})
    else:
        model_cfg, pre_cfg = open_clip.get_model_config(str(arch)), {}
        if model_cfg is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}; known: {', '.join(open_clip.list_models())}")
    model_cfg = deepcopy(model_cfg)
    if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"{arch}: an open_clip model config needs embed_dim, vision_cfg and text_cfg")
    return model_cfg, pre_cfg


def build_open_clip(model_cfg: dict[str, Any]) -> nn.Module:
    """An open_clip model from its config, randomly initialised and never downloading tower weights (what
    `open_clip.create_model(arch, pretrained=None)` builds, for built-in names and custom configs alike)."""
    import open_clip

    cfg = deepcopy(model_cfg)
    text_cfg, vision_cfg = cfg["text_cfg"], cfg["vision_cfg"]
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    hf_text = "hf_model_name" in text_cfg
    if hf_text:
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or hf_text
    if "multimodal_cfg" in cfg:
        return open_clip.CoCa(**cfg)
    return (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**cfg)


def open_clip_tokenizer(arch: str | Path, model_cfg: dict[str, Any], folder: Path | None = None) -> Any:
    """The tokenizer open_clip pairs with `arch`: the built-in lookup for model names, otherwise what the config's
    text_cfg asks for (an HF tokenizer, from `folder` when given, or the bundled CLIP BPE `SimpleTokenizer`)."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    if isinstance(arch, str) and open_clip.get_model_config(arch) is not None and not Path(arch).exists():
        return open_clip.get_tokenizer(arch)
    text_cfg = model_cfg.get("text_cfg", {})
    context = text_cfg.get("context_length", 77)
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if text_cfg.get("hf_tokenizer_name"):
        source = folder if folder is not None else text_cfg["hf_tokenizer_name"]
        return HFTokenizer(
            str(source), context_length=context, tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs
        )
    return open_clip.SimpleTokenizer(context_length=context, **kwargs)


def load_open_clip_weights(model: nn.Module, weights: Path) -> None:
    """Strictly load an open_clip state dict file (the fixes `open_clip.load_checkpoint` applies included)."""
    sd = load_state_dict_file(weights)
    for name in ("logit_scale", "logit_bias"):
        param = getattr(model, name, None)
        if name in sd and isinstance(param, torch.Tensor) and sd[name].ndim != param.ndim:
            sd[name] = sd[name].reshape(param.shape)
    if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None and "logit_scale" in sd:
        sd["logit_bias"] = torch.zeros_like(sd["logit_scale"])
    sd.pop("text.transformer.embeddings.position_ids", None)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights}: does not match the open_clip architecture: missing {missing[:5]}{'...' * (len(missing) > 5)}, "
            f"unexpected {unexpected[:5]}{'...' * (len(unexpected) > 5)}"
        )


def open_clip_backbone(model: nn.Module, model_cfg: dict, pre_cfg: dict, tokenizer: Any) -> ClipBackbone:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = pre_cfg.get("mean", OPENAI_DATASET_MEAN)
    std = pre_cfg.get("std", OPENAI_DATASET_STD)
    size = model_cfg["vision_cfg"].get("image_size", 224)
    context = int(model_cfg["text_cfg"].get("context_length", 77))
    return ClipBackbone(
        model,
        "open_clip",
        tokenizer,
        image_size=size,
        mean=mean,
        std=std,
        context_length=context,
        embed_dim=int(model_cfg["embed_dim"]),
    )


def _load_open_clip(weights: Path, arch: str, what: str) -> ClipBackbone:
    model_cfg, pre_cfg = open_clip_config(arch)
    model = build_open_clip(model_cfg)
    load_open_clip_weights(model, weights)
    return open_clip_backbone(model, model_cfg, pre_cfg, open_clip_tokenizer(arch, model_cfg))


def _load_open_clip_dir(p: Path, arch: str | None, what: str) -> ClipBackbone:
    model_cfg, pre_cfg = open_clip_config(arch or p)
    found = [p / n for n in OPEN_CLIP_WEIGHTS if (p / n).exists()]
    found += sorted(q for q in p.iterdir() if q.suffix in (".safetensors", *TORCH_SUFFIXES) and q not in found)
    if not found:
        require_files(p, OPEN_CLIP_WEIGHTS, what, any_of=True)
    model = build_open_clip(model_cfg)
    load_open_clip_weights(model, found[0])
    return open_clip_backbone(model, model_cfg, pre_cfg, open_clip_tokenizer(arch or p, model_cfg, folder=p))


class ClipScore(Reward):
    """CLIP score: cos(image embedding, text embedding), averaged over `frames` evenly spaced frames."""

    name = "clip"

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        arch: str | None = None,
        processor_path: str | Path | None = None,
        frames: int | None = 4,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.frames = frames
        self.clip = load_clip(
            path, arch=arch, processor_path=processor_path, device=self.device, dtype=self.dtype, what=self.name
        )

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        cos = self.clip.cosine(select_frames(videos, self.frames), prompts)
        return RewardOutput(cos, {"clip": cos})


@register("clip")
def _clip(**config: Any) -> ClipScore:
    return ClipScore(**config)
