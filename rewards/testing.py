"""Tiny reward checkpoints in the real formats, for tests and benchmarks.

Each builder makes a small random model in memory and writes it the way the real weights ship, so the rewards
load it through their own loaders, exactly as they load the real files:

    tiny_hf_clip(path)                 a transformers `CLIPModel` folder (CLIP, PickScore, aesthetic backbone):
                                       config.json, model.safetensors, tokenizer files, preprocessor_config.json
    tiny_open_clip(path)               an open_clip CLIP: its JSON model config (the `arch`), the HPS-style
                                       torch file {"state_dict": ...}, a safetensors copy and a bare state dict
    tiny_aesthetic_head(path, dim)     an aesthetic head: improved-aesthetic-predictor's MLP or a Linear(D, 1)
    tiny_videoalign(path)              a VideoAlign folder: a Qwen2-VL miniature, processor, reward head and
                                       vidpost_reward.json

Nothing is downloaded: the tokenizers are built in memory (`vidpost.models.tokenizers`, or a word-level one for
Qwen2-VL), except open_clip's own CLIP BPE tokenizer, which ships inside the open_clip package. Sizes are keyword
options; the defaults are the smallest models the tests use. Every builder seeds its own random draws (`seed`)
and leaves the caller's global torch RNG state as it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import CLIP_MEAN, CLIP_STD

__all__ = [
    "AESTHETIC_FILES",
    "HPS_FILE",
    "QWEN_SPECIALS",
    "VIDEOALIGN_CHAT_TEMPLATE",
    "ImprovedAestheticPredictor",
    "build_videoalign_tokenizer",
    "tiny_aesthetic_head",
    "tiny_hf_clip",
    "tiny_open_clip",
    "tiny_open_clip_config",
    "tiny_videoalign",
]

HPS_FILE = "HPS_v2.1_compressed.pt"
#: The file name a head gets when `tiny_aesthetic_head` is given a folder.
AESTHETIC_FILES = {"mlp": "sac+logos+ava1-l14-linearMSE.pth", "linear": "sa_0_4_vit_l_14_linear.pth"}

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

#: Qwen2-VL's chat template, reduced to what one user turn with a video and a text needs.
VIDEOALIGN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% for content in message['content'] %}"
    "{% if content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _seeded(seed: int):
    """A context in which torch's global RNG is seeded with `seed`, restored afterwards."""
    ctx = torch.random.fork_rng(devices=[])
    ctx.__enter__()
    torch.manual_seed(seed)
    return ctx


def _base_words() -> list[str]:
    from vidpost.models.tokenizers import BASE_WORDS

    return list(BASE_WORDS)


# ------------------------------------------------------------------------------------- transformers CLIPModel


def tiny_hf_clip(
    path: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    layers: int = 1,
    heads: int = 2,
    projection_dim: int = 16,
    max_positions: int = 32,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    words: Iterable[str] | None = None,
    seed: int = 0,
) -> Path:
    """A transformers `CLIPModel` folder at `path` (`save_pretrained` layout, with a CLIP-style BPE tokenizer over
    `words` — default `vidpost.models.tokenizers.BASE_WORDS` — and a `CLIPImageProcessor` with `mean` / `std`).
    Text and vision towers share the sizes given; prompts are truncated at `max_positions` tokens. Returns `path`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from vidpost.models.tokenizers import build_clip_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_clip_tokenizer(_base_words() if words is None else [w for t in words for w in t.lower().split()])
    common = dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
    )
    text = dict(
        vocab_size=len(tok),
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **common,
    )
    vision = dict(image_size=image_size, patch_size=patch_size, **common)
    ctx = _seeded(seed)
    try:
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)).eval()
    finally:
        ctx.__exit__(None, None, None)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(mean),
        image_std=list(std),
    ).save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------------- open_clip


def tiny_open_clip_config(
    *,
    embed_dim: int = 16,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 32,
    head_width: int = 16,
    layers: int = 1,
    context_length: int = 16,
    text_width: int = 32,
    text_heads: int = 2,
    text_layers: int = 1,
) -> dict[str, Any]:
    """An open_clip model config `{"embed_dim", "vision_cfg", "text_cfg"}` (the text tower keeps the real CLIP BPE
    vocabulary, 49408, since open_clip's tokenizer is the real one)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "layers": layers,
            "width": width,
            "head_width": head_width,
            "patch_size": patch_size,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": text_width,
            "heads": text_heads,
            "layers": text_layers,
        },
    }


def tiny_open_clip(path: str | Path, *, seed: int = 1, **sizes: Any) -> dict[str, Any]:
    """A tiny open_clip CLIP written to the folder `path` in three weight formats. `sizes` are
    `tiny_open_clip_config`'s options. Returns a dict:

        dir          the folder
        arch         the JSON model config's path (`tiny-clip.json`), the `arch` the rewards take
        cfg          the model config dict
        hps          `HPS_v2.1_compressed.pt`: a torch file {"state_dict": ..., "epoch": 1}, as HPS ships
        safetensors  `tiny.safetensors`: the same state dict
        bin          `bare.bin`: the bare state dict saved with torch.save
        model        the model itself (eval mode), for reference computations
    """
    import open_clip
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = tiny_open_clip_config(**sizes)
    arch = path / "tiny-clip.json"
    arch.write_text(json.dumps(cfg))
    ctx = _seeded(seed)
    try:
        model = open_clip.CLIP(**cfg).eval()
    finally:
        ctx.__exit__(None, None, None)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 1}, path / HPS_FILE)
    save_file(sd, str(path / "tiny.safetensors"))
    torch.save(sd, path / "bare.bin")
    return {
        "dir": path,
        "arch": str(arch),
        "cfg": cfg,
        "hps": path / HPS_FILE,
        "safetensors": path / "tiny.safetensors",
        "bin": path / "bare.bin",
        "model": model,
    }


# ------------------------------------------------------------------------------------------------- aesthetic


class ImprovedAestheticPredictor(nn.Module):
    """improved-aesthetic-predictor's MLP, written out as the reference does (keys layers.0 ... layers.7; no
    activations, as in the reference)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def tiny_aesthetic_head(path: str | Path, dim: int, kind: str = "mlp", *, prefix: str = "", seed: int = 2) -> Path:
    """A random aesthetic head over `dim`-d CLIP embeddings, saved at `path`: `kind="mlp"` is
    improved-aesthetic-predictor's MLP (`ImprovedAestheticPredictor`), `"linear"` a Linear(dim, 1) (`weight`, `bias`,
    under `prefix` if given). A `.safetensors` path is written with safetensors, anything else with torch.save;
    an existing folder gets the real file name (`AESTHETIC_FILES[kind]`). Returns the file's path."""
    if kind not in AESTHETIC_FILES:
        raise ValueError(f"tiny_aesthetic_head: kind must be one of {sorted(AESTHETIC_FILES)}, got {kind!r}")
    path = Path(path)
    if path.is_dir():
        path = path / AESTHETIC_FILES[kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    ctx = _seeded(seed)
    try:
        head = ImprovedAestheticPredictor(dim) if kind == "mlp" else nn.Linear(dim, 1)
    finally:
        ctx.__exit__(None, None, None)
    sd = {prefix + k: v.detach().contiguous() for k, v in head.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


# ------------------------------------------------------------------------------------------------- VideoAlign


def build_videoalign_tokenizer(
    words: Iterable[str] | None = None, *, extra_specials: Sequence[str] = (), prompt_template: str | None = None
):
    """A word-level fast tokenizer with Qwen2-VL's special tokens (+ `extra_specials`) over the words of the
    default VideoAlign prompt, `prompt_template`, `words` (default `BASE_WORDS`) and the chat turns; other words
    map to `[UNK]`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from .videoalign import DEFAULT_PROMPT_TEMPLATE

    words = _base_words() if words is None else list(words)
    text = " ".join(
        [DEFAULT_PROMPT_TEMPLATE, prompt_template or "", *words, "system user assistant you are a helpful"]
    )
    specials = [*QWEN_SPECIALS, *extra_specials]
    vocab = {s: i for i, s in enumerate([*specials, "[UNK]"])}
    for word in re.findall(r"\w+|[^\w\s]+", text.lower()):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="<|endoftext|>", eos_token="<|im_end|>"
    )
    fast.add_special_tokens({"additional_special_tokens": specials[1:]})
    return fast


def tiny_videoalign(
    path: str | Path,
    *,
    reward_token: str = "last",
    head: str = "file",
    legacy_keys: bool = False,
    chat_template: str | None = None,
    words: Iterable[str] | None = None,
    prompt_template: str | None = None,
    stats: Mapping[str, Mapping[str, float]] | None = None,
    frames: int = 4,
    size: int = 56,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vision_depth: int = 1,
    vision_embed_dim: int = 32,
    vision_heads: int = 2,
    min_pixels: int = 28 * 28,
    max_pixels: int = 56 * 56,
    seed: int = 0,
    **cfg_extra: Any,
) -> Path:
    """A miniature VideoAlign folder at `path` (the layout `vidpost.rewards.videoalign` documents). Returns `path`.

    `reward_token` "last" or "special" (the tokenizer then has the reward tokens); `head` "file"
    (`reward_head.safetensors`) or "inside" (`rm_head.weight` in model.safetensors); `legacy_keys` writes the
    pre-5.x Qwen2-VL key names (`model.*`, `visual.*`); `chat_template` goes to the processor (none: the reward
    renders Qwen2-VL's text itself). The tokenizer knows `words` (see `build_videoalign_tokenizer`). The reward
    config gets `prompt_template` (if given), `stats` ({"mean": {...}, "std": {...}}, if given), `frames`, `size`
    and `cfg_extra`."""
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from .videoalign import SPECIAL_TOKENS

    if reward_token not in ("last", "special") or head not in ("file", "inside"):
        raise ValueError(
            f"tiny_videoalign: reward_token 'last'/'special', head 'file'/'inside'; got {reward_token!r}, {head!r}"
        )
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_videoalign_tokenizer(
        words, extra_specials=SPECIAL_TOKENS if reward_token == "special" else (), prompt_template=prompt_template
    )
    pixels = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=chat_template,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    head_dim = hidden_size // heads
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": 256,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                # multimodal RoPE: (temporal, height, width) sections of head_dim / 2
                "mrope_section": [head_dim // 2 - 2 * (head_dim // 8), head_dim // 8, head_dim // 8],
            },
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": vision_depth,
            "embed_dim": vision_embed_dim,
            "hidden_size": hidden_size,
            "num_heads": vision_heads,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    ctx = _seeded(seed)
    try:
        model = Qwen2VLForConditionalGeneration(config).eval()
        head_weight = torch.randn(3, hidden_size)
    finally:
        ctx.__exit__(None, None, None)
    model.save_pretrained(root)
    processor.save_pretrained(root)

    weights_file = root / "model.safetensors"
    state = load_file(weights_file)
    if legacy_keys:  # the pre-5.x layout of the released Qwen2-VL checkpoints
        state = {re.sub(r"^model\.language_model\.", "model.", k): v for k, v in state.items()}
        state = {re.sub(r"^model\.visual\.", "visual.", k): v for k, v in state.items()}
    if head == "inside":
        state["rm_head.weight"] = head_weight
    if legacy_keys or head == "inside":
        save_file(state, weights_file, metadata={"format": "pt"})
    if head == "file":
        save_file({"weight": head_weight}, root / "reward_head.safetensors")

    cfg: dict[str, Any] = {"reward_attributes": ["VQ", "MQ", "TA"]}
    if stats:
        cfg.update({k: dict(v) for k, v in stats.items()})
    if prompt_template:
        cfg["prompt_template"] = prompt_template
    cfg.update({"frames": frames, "size": size, "reward_token": reward_token, **cfg_extra})
    if reward_token == "special":
        cfg["special_tokens"] = list(SPECIAL_TOKENS)
    (root / "vidpost_reward.json").write_text(json.dumps(cfg))
    return root
