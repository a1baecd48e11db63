"""VideoAlign's VideoReward: a Qwen2-VL reward model scoring visual quality, motion quality and text alignment.

VideoReward ("Improving Video Generation with Human Feedback", KwaiVGI/VideoAlign) is a Qwen2-VL vision-language
model whose language model's last hidden state goes through a linear reward head `rm_head` (hidden → 3, no bias)
giving three raw values per video: visual quality (VQ), motion quality (MQ) and text alignment (TA). Each raw value
is normalised with the mean and std of that attribute over the training set, shipped with the checkpoint.

This module is our own loader and scorer for that architecture. It reads a folder in the following layout (the
files a transformers Qwen2-VL checkpoint has, plus the reward head and the reward config):

    <path>/
      config.json                        Qwen2-VL config (model_type "qwen2_vl")
      model.safetensors                  Qwen2-VL weights (or model.safetensors.index.json + its shards);
                                         current (`model.language_model.*`, `model.visual.*`) or legacy
                                         (`model.*`, `visual.*`) key names both load
      tokenizer.json / tokenizer_config.json       the tokenizer (with the reward special tokens, if used)
      preprocessor_config.json or processor_config.json    the Qwen2-VL image / video processor settings
      reward_head.safetensors            the head: `weight` [n_out, hidden] (+ optional `bias`), also accepted
                                         as `rm_head.weight`; may be left out when the main weights hold
                                         `rm_head.weight` (any key ending in `rm_head.weight`)
      vidpost_reward.json or model_config.json     the reward config:
        {
          "reward_attributes": ["VQ", "MQ", "TA"],      order of the head's outputs
          "mean": {"VQ": ..., "MQ": ..., "TA": ...},    normalisation statistics (default 0 / 1)
          "std":  {"VQ": ..., "MQ": ..., "TA": ...},
          "prompt_template": "... {prompt} ...",        the user text; `{prompt}` is the caption
          "frames": 8,                                   frames sampled per video (evenly spaced)
          "fps": 2.0,                                    or: frames per second of video, with `video_fps`
          "size": [448, 448],                            frame [H, W] (or one int), rounded to the patch grid
          "reward_token": "last",                        "last" or "special"
          "special_tokens": ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"],
          "weights": {"VQ": 1.0, "MQ": 1.0, "TA": 1.0},  how `score` combines the normalised values
                                                         (attributes left out weigh 0; no weights: 1 each)
          "use_chat_template": true
        }

VideoAlign's released checkpoint (a LoRA adapter plus a non-LoRA state dict and its own `model_config.json` with
`VQ_mean`, ... keys) must be merged and saved in this layout first; flat `<ATTR>_mean` / `<ATTR>_std` keys in the
reward config are accepted as well as the nested `mean` / `std` dicts.

Scoring, per video (a batch is scored in chunks of `batch_size`, default all at once, left-padded — Qwen2-VL's
multimodal RoPE positions and the attention mask skip the padding, so padded and unpadded scores agree):

1. `frames` evenly spaced frames (first and last included; `select_frames`), or `round(T * fps / video_fps)` when
   the config gives `fps` and the caller gives the videos' own `video_fps`, or else every frame;
2. a plain bicubic resize to `size` (rounded to a multiple of patch_size × merge_size, 28 for Qwen2-VL); without
   a `size`, the video's own size rounded the way Qwen2-VL's processor would;
3. the chat text: the processor's chat template with a user turn holding the video then the prompt text
   (`prompt_template` filled with the caption), and the assistant generation prompt; without a chat template,
   the same text Qwen2-VL's template renders (default system turn included);
4. the Qwen2-VL processor expands the video placeholder, patchifies the frames and applies its mean / std (the
   frames are already in [0, 1] and at the final size, so it neither rescales nor resizes);
5. the base model's last hidden state (after the final norm) is read at the reward token: the last real token
   ("last"), or — as in VideoAlign's special-token mode — attribute i's value at its own special token (output i
   of a head with one output per attribute, or the only output of a one-output head);
6. `(raw - mean) / std` per attribute gives the components `VQ`, `MQ`, `TA`; `score = Σ weight · component`,
   by default weights 1 each: VideoAlign's "Overall" = VQ + MQ + TA (pass weights of 1/3 for the mean).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vidpost.rewards.base import (
    Reward,
    RewardOutput,
    RewardPathError,
    register,
    require_files,
    resize_frames,
    select_frames,
)

__all__ = ["DEFAULT_PROMPT_TEMPLATE", "EXPECTED_FILES", "VideoAlignReward", "check_folder"]

ATTRIBUTES = ("VQ", "MQ", "TA")
SPECIAL_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
HEAD_FILE = "reward_head.safetensors"
CONFIG_FILES = ("vidpost_reward.json", "model_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")

#: One line per expected file, for error messages.
EXPECTED_FILES = (
    "config.json",
    " or ".join(WEIGHT_FILES),
    " or ".join(TOKENIZER_FILES),
    " or ".join(PROCESSOR_FILES),
    " or ".join(CONFIG_FILES),
    f"{HEAD_FILE} (or rm_head.weight inside the model weights)",
)

DEFAULT_PROMPT_TEMPLATE = (
    "You are evaluating a generated video on three criteria: visual quality, motion quality and how well it "
    "matches its text prompt. The text prompt is: {prompt}"
)
DEFAULT_SYSTEM = "You are a helpful assistant."


def _expected() -> str:
    return "; ".join(EXPECTED_FILES)


def _missing(path: Path, names: Sequence[str]) -> bool:
    return not any((path / n).exists() for n in names)


def _load_reward_config(path: Path) -> dict[str, Any]:
    for name in CONFIG_FILES:
        if (path / name).exists():
            with open(path / name) as f:
                return json.load(f)
    raise RewardPathError(f"videoalign: {path} lacks {' or '.join(CONFIG_FILES)} (expected {_expected()})")


def _stats(cfg: Mapping[str, Any], key: str, attrs: Sequence[str], default: float) -> list[float]:
    """`cfg[key][attr]` (ours), else VideoAlign's flat `<attr>_<key>`, else `default`."""
    nested = cfg.get(key) or {}
    if not isinstance(nested, Mapping):
        raise ValueError(f"videoalign: reward config {key!r} must map attribute → value; got {nested!r}")
    return [float(nested.get(a, cfg.get(f"{a}_{key}", default))) for a in attrs]


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [path / s for s in shards]
    return [path / "model.safetensors"]


def _load_head(path: Path, attrs: Sequence[str]) -> torch.nn.Linear:
    """The reward head from `reward_head.safetensors`, else from `*rm_head.*` keys in the model weights."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    if (path / HEAD_FILE).exists():
        with safe_open(path / HEAD_FILE, framework="pt") as f:
            for key in f.keys():
                tensors[key.rsplit(".", 1)[-1] if key.startswith("rm_head.") else key] = f.get_tensor(key)
    else:
        for file in _weight_files(path):
            if not file.exists():
                continue
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    if key.endswith(("rm_head.weight", "rm_head.bias")):
                        tensors[key.rsplit(".", 1)[-1]] = f.get_tensor(key)
    if "weight" not in tensors:
        raise RewardPathError(
            f"videoalign: {path} lacks {HEAD_FILE} and its model weights hold no rm_head.weight "
            f"(expected {_expected()})"
        )
    weight = tensors["weight"].float()
    if weight.dim() != 2 or weight.shape[0] not in (1, len(attrs)):
        raise ValueError(
            f"videoalign: reward head weight has shape {tuple(weight.shape)}; expected [{len(attrs)} or 1, hidden]"
        )
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors)
    with torch.no_grad():
        head.weight.copy_(weight)
        if "bias" in tensors:
            head.bias.copy_(tensors["bias"].float())
    return head.eval().requires_grad_(False)


def check_folder(path: str | Path | None) -> Path:
    """`path` as a Path if it holds a VideoAlign reward folder; otherwise `RewardPathError` naming every expected
    file and the ones missing."""
    if path is None or str(path) == "":
        raise RewardPathError(
            f"videoalign: no weights path given; set `path` in the reward config (expected {_expected()})"
        )
    p = require_files(path, [], "videoalign")
    if p.is_file():
        raise RewardPathError(f"videoalign: {p} is a file; expected a folder with {_expected()}")
    groups = [("config.json",), WEIGHT_FILES, TOKENIZER_FILES, PROCESSOR_FILES, CONFIG_FILES]
    missing = [" or ".join(g) for g in groups if _missing(p, g)]
    if missing:
        raise RewardPathError(f"videoalign: {p} lacks {'; '.join(missing)} (expected {_expected()})")
    return p


@register("videoalign")
class VideoAlignReward(Reward):
    """VideoAlign's VideoReward (Qwen2-VL + a linear VQ / MQ / TA head); see the module docstring for the folder
    layout and the scoring steps. Arguments other than `path` override the folder's reward config.

    `weights` maps attributes to their weight in `score` (attributes left out weigh 0); without weights anywhere,
    `score` is VideoAlign's Overall = VQ + MQ + TA of the normalised values. `video_fps` is the frame rate of the
    videos passed in, used only with a config `fps` and no `frames`. `batch_size` bounds the videos per forward
    pass (default: the whole batch, left-padded)."""

    name = "videoalign"
    uses_prompts = True

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        frames: int | None = None,
        size: int | Sequence[int] | None = None,
        weights: Mapping[str, float] | None = None,
        prompt_template: str | None = None,
        video_fps: float | None = None,
        batch_size: int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

        self.path = check_folder(path)
        cfg = _load_reward_config(self.path)
        self.attributes = tuple(cfg.get("reward_attributes") or ATTRIBUTES)
        self.mean = torch.tensor(_stats(cfg, "mean", self.attributes, 0.0))
        self.std = torch.tensor(_stats(cfg, "std", self.attributes, 1.0))
        if not bool((self.std > 0).all()):
            raise ValueError(f"videoalign: std must be positive; got {self.std.tolist()}")
        weights = dict(weights if weights is not None else cfg.get("weights") or {})
        unknown = set(weights) - set(self.attributes)
        if unknown:
            raise ValueError(f"videoalign: weights name unknown attributes {sorted(unknown)}; known {self.attributes}")
        self.weights = torch.tensor([float(weights.get(a, 1.0 if not weights else 0.0)) for a in self.attributes])
        self.prompt_template = prompt_template or cfg.get("prompt_template") or DEFAULT_PROMPT_TEMPLATE
        self.frames = frames if frames is not None else cfg.get("frames")
        self.fps = cfg.get("fps")
        self.video_fps = video_fps
        size = size if size is not None else cfg.get("size")
        self.batch_size = batch_size or cfg.get("batch_size")
        self.use_chat_template = bool(cfg.get("use_chat_template", True))
        self.reward_token = cfg.get("reward_token", "last")
        if self.reward_token not in ("last", "special"):
            raise ValueError(f"videoalign: reward_token must be 'last' or 'special'; got {self.reward_token!r}")

        self.head = _load_head(self.path, self.attributes)
        self.processor = AutoProcessor.from_pretrained(self.path)
        self.processor.tokenizer.padding_side = "left"
        video_processor = self.processor.video_processor
        if hasattr(video_processor, "cap_pixels_per_frame"):
            video_processor.cap_pixels_per_frame = False  # we resize ourselves; silences a deprecation warning
        self.factor = int(video_processor.patch_size) * int(video_processor.merge_size)
        self.size = None if size is None else self._round_size(size)

        self.special_ids: list[int] = []
        if self.reward_token == "special":
            tokens = list(cfg.get("special_tokens") or SPECIAL_TOKENS)
            if len(tokens) != len(self.attributes):
                raise ValueError(f"videoalign: {len(tokens)} special tokens for {len(self.attributes)} attributes")
            tokenizer = self.processor.tokenizer
            self.special_ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
            if any(i is None or i == tokenizer.unk_token_id for i in self.special_ids):
                raise ValueError(f"videoalign: the tokenizer in {self.path} lacks the reward tokens {tokens}")
            self.special_tokens = tokens
        elif self.head.out_features != len(self.attributes):
            raise ValueError(f"videoalign: 'last' pooling needs a head with {len(self.attributes)} outputs")

        model = Qwen2VLForConditionalGeneration.from_pretrained(self.path, dtype=self.dtype, use_safetensors=True)
        # Only the base model (vision tower + language model) is needed: the LM head is dropped.
        self.model = model.model.eval().requires_grad_(False)
        del model
        self.model.to(self.device)
        self.head.to(self.device)

    # ------------------------------------------------------------------------------------------- inputs

    def _round_size(self, size: int | Sequence[int]) -> tuple[int, int]:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        f = self.factor
        return max(f, round(h / f) * f), max(f, round(w / f) * f)

    def _frame_count(self, t: int) -> int | None:
        if self.frames is not None:
            return int(self.frames)
        if self.fps and self.video_fps:
            return max(2, min(t, round(t * float(self.fps) / float(self.video_fps))))
        return None

    def _target_size(self, h: int, w: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

        size = self.processor.video_processor.size
        return smart_resize(
            h, w, factor=self.factor, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]
        )

    def user_text(self, prompt: str) -> str:
        """The text of the user turn: the template filled with the caption, plus any missing reward tokens."""
        text = self.prompt_template.replace("{prompt}", prompt)
        if self.reward_token == "special":
            text += "".join(t for t in self.special_tokens if t not in text)
        return text

    def chat_text(self, prompt: str) -> str:
        """The full model input text for one caption, with a single video placeholder before the user text."""
        text = self.user_text(prompt)
        if self.use_chat_template and getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
            return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return (
            f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|>{self.processor.video_token}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
        )

    def prepare(self, videos: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Model inputs (left-padded) for videos [B, C, T, H, W] in [0, 1] and their captions."""
        frames = select_frames(videos, self._frame_count(videos.shape[2]))  # [B, k, C, H, W]
        frames = resize_frames(frames.float(), self._target_size(*frames.shape[-2:]), crop=False)
        inputs = self.processor(
            text=[self.chat_text(p) for p in prompts],
            videos=list(frames.cpu()),
            padding=True,
            return_tensors="pt",
            do_resize=False,
            do_rescale=False,
        )
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    # ------------------------------------------------------------------------------------------- scoring

    def raw_scores(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Unnormalised head values [B, n_attributes] for prepared inputs."""
        hidden = self.model(**inputs, use_cache=False).last_hidden_state.float()  # [B, L, D]
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        rows = torch.arange(ids.shape[0], device=ids.device)
        positions = torch.arange(ids.shape[1], device=ids.device)
        with torch.autocast(self.device.type, enabled=False):  # the head runs in float32
            if self.reward_token == "last":
                last = (mask.long() * positions).argmax(-1)  # the last real token, whichever side was padded
                return self.head(hidden[rows, last])
            values = []
            for i, token_id in enumerate(self.special_ids):
                hits = (ids == token_id) & mask.bool()
                if not bool(hits.any(-1).all()):
                    raise RuntimeError(f"videoalign: reward token {self.special_tokens[i]} missing from an input")
                pos = (hits.long() * positions).argmax(-1)  # its last occurrence
                out = self.head(hidden[rows, pos])
                values.append(out[:, i] if out.shape[-1] > 1 else out[:, 0])
            return torch.stack(values, dim=-1)

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        chunk = self.batch_size or videos.shape[0]
        raws = [
            self.raw_scores(self.prepare(videos[i : i + chunk], prompts[i : i + chunk]))
            for i in range(0, videos.shape[0], chunk)
        ]
        raw = torch.cat(raws).float().cpu()
        values = (raw - self.mean) / self.std
        score = values @ self.weights
        components = {a: values[:, i] for i, a in enumerate(self.attributes)}
        return RewardOutput(score, components)

    def __repr__(self) -> str:
        return f"VideoAlignReward(path={str(self.path)!r}, attributes={self.attributes}, device={self.device})"
