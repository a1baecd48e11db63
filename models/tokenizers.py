"""Tokenizers built in memory for miniature models.

Real checkpoints ship their own tokenizer files (UMT5's SentencePiece model for Wan, a Llama tokenizer and a CLIP
tokenizer for HunyuanVideo). Miniatures — the test models and the Shapes world — need tokenizers of the same
*classes* without downloading anything, so this module builds them from a word list with the `tokenizers`
library: a Unigram model whose pieces are the given words (with SentencePiece's "▁" word-start marker) plus every
single character as a fallback, so any lower-case ASCII text tokenizes without `<unk>` and known words are one
token each. The result is wrapped in the transformers fast-tokenizer class the real model family uses, and saves
and loads through `save_pretrained` / `AutoTokenizer.from_pretrained` exactly like the real files.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTokenizerFast, PreTrainedTokenizerBase, PreTrainedTokenizerFast, T5TokenizerFast

BASE_WORDS = (
    "a an the and of on in to with is are moves moving stays still left right up down fast slow small large "
    "red green blue yellow purple orange cyan white black grey gray circle square triangle shape video cat dog "
    "man woman walks runs camera scene background"
).split()

_CHARS = string.ascii_lowercase + string.digits + string.punctuation


def _unigram(specials: list[str], words: Iterable[str], unk: str) -> Tokenizer:
    seen: set[str] = set()
    pieces: list[tuple[str, float]] = [(s, 0.0) for s in specials]
    for w in words:
        piece = "▁" + w.lower()
        if piece not in seen and w:
            seen.add(piece)
            pieces.append((piece, -1.0))
    pieces.append(("▁", -2.0))
    pieces += [(c, -8.0) for c in _CHARS if c not in seen]
    tok = Tokenizer(models.Unigram(pieces, unk_id=specials.index(unk), byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


def build_t5_tokenizer(words: Iterable[str] = BASE_WORDS) -> PreTrainedTokenizerBase:
    """A UMT5-style tokenizer (`<pad>`=0, `</s>`=1, `<unk>`=2, `</s>` appended), as Wan's text encoder expects."""
    specials = ["<pad>", "</s>", "<unk>"]
    tok = _unigram(specials, words, "<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def build_llama_tokenizer(words: Iterable[str] = BASE_WORDS) -> PreTrainedTokenizerBase:
    """A Llama-3-style tokenizer with the chat header tokens HunyuanVideo's prompt template uses; BOS prepended.

    Like Llama 3's own files it is a generic `PreTrainedTokenizerFast` over tokenizer.json (the Llama-specific
    class would rebuild a BPE model from the vocabulary on load).
    """
    specials = ["<unk>", "<pad>", *LLAMA_SPECIALS]
    tok = _unigram(specials, words, "<unk>")
    bos = specials.index("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.add_special_tokens({"additional_special_tokens": LLAMA_SPECIALS[2:]})
    return fast


def build_clip_tokenizer(words: Iterable[str] = BASE_WORDS) -> PreTrainedTokenizerBase:
    """A CLIP-style BPE tokenizer (`</w>` word-end suffix, `<|startoftext|> ... <|endoftext|>`).

    Every character (with and without `</w>`) is in the vocabulary; each given word gets the chain of merges that
    builds it left to right, so known words are one token and anything else falls back to characters.
    """
    specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
    vocab: dict[str, int] = {s: i for i, s in enumerate(specials)}

    def add(tok: str) -> None:
        vocab.setdefault(tok, len(vocab))

    for c in _CHARS:
        add(c)
        add(c + "</w>")
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for w in words:
        w = w.lower()
        if len(w) < 2 or any(c not in _CHARS for c in w):
            continue
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            pair = (left, right)
            left = left + right
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            add(left)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        pair="<|startoftext|> $A <|endoftext|> $B <|endoftext|>",
        special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)],
    )
    return CLIPTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )
