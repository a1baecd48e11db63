"""A miniature causal LM for the Shapes world's specialised rewriter, built from scratch in memory.

The default enhancer (SmolLM2-135M-Instruct) is a real pretrained model, but fine-tuning 135 M parameters on a
2-core CPU takes hours. The Shapes world's rewriting task is narrow — user-style prompts ("giant lozenge that is
amber, staying still") to the canonical captions the video model was trained on ("a large orange diamond stays
still") — so a few-million-parameter Llama trained from random weights learns it in minutes. It is a real
`LlamaForCausalLM` with a ChatML chat template and a `PreTrainedTokenizerFast`, saved with `save_pretrained`, so the
same `Rewriter.from_pretrained(path)` and `vidpost enhance train sft` that serve any Hugging Face LM serve it.

Tokenizer: a Unigram model whose pieces are the Shapes vocabulary (every word of the train split's user prompts,
paraphrases and captions, plus the system prompt below) with every printable ASCII character as a fallback piece,
so any text tokenizes without `<unk>`; known words are one token each.

    vidpost enhance train sft --config configs/shapes/enhance-sft-mini.yaml   (model.path: miniature:shapes)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

SYSTEM_PROMPT = "rewrite the user prompt as the caption of the shapes video model"
"""The miniature's system prompt: short on purpose (every token of the chat is context the tiny model attends to)."""

REWRITER_SETTINGS = {
    "system_prompt": SYSTEM_PROMPT,
    "few_shot": [],
    "max_new_tokens": 48,
    "max_words": 40,
    "repetition_penalty": 1.0,
    "batch_size": 32,
}
"""The `rewriter:` settings the miniature is trained and served with (captions repeat words: no penalty)."""

SPECIALS = ["<unk>", "<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MINIATURES = ("shapes",)


def shapes_vocabulary(n: int = 4000, paraphrases: int = 3) -> list[str]:
    """Sorted words of the Shapes train split's prompts and captions (never a held-out scene) + the chat words."""
    from vidpost.enhance.train import shapes_pairs

    words: set[str] = set(re.findall(r"[a-z]+", SYSTEM_PROMPT + " system user assistant"))
    for row in shapes_pairs(n, paraphrases=paraphrases, seed=12345):
        for text in (row["prompt"], row["target"]):
            words.update(re.findall(r"[a-z]+", text.lower()))
    return sorted(words)


def build_tokenizer(words: list[str]):
    """ChatML `PreTrainedTokenizerFast` over `words` (one token each) with printable ASCII as fallback pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = [(s, 0.0) for s in SPECIALS] + [("▁" + w, -1.0) for w in words] + [("▁", -2.0)]
    have = {p for p, _ in pieces}
    pieces += [(chr(c), -8.0) for c in range(33, 127) if chr(c) not in have]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|endoftext|>", padding_side="left"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHATML
    return fast


def build_miniature(
    name: str,
    out_dir: str | os.PathLike,
    *,
    hidden_size: int = 192,
    layers: int = 4,
    heads: int = 4,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised miniature rewriter LM (`name` in MINIATURES) to `out_dir`; returns the folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in MINIATURES:
        raise ValueError(f"unknown miniature rewriter {name!r}; known: {', '.join(MINIATURES)}")
    tokenizer = build_tokenizer(shapes_vocabulary())
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=[im_end, tokenizer.eos_token_id],
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = [im_end, tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def resolve_miniature(path: str, output_dir: str | os.PathLike) -> str:
    """`miniature:NAME` → a freshly built miniature under `output_dir/init` (reused when already there)."""
    if not path.startswith("miniature:"):
        return path
    folder = Path(output_dir) / "init"
    if not (folder / "config.json").exists():
        build_miniature(path.split(":", 1)[1], folder)
    return str(folder)
