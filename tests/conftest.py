"""Shared fixtures: miniature models of the real classes saved to disk and loaded back like real weights."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# the research scripts (not in the package) are tested as top-level modules
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))
if not torch.cuda.is_available():
    # Triton kernels run on the CPU interpreter; the flag must be set before any kernel module is imported (a
    # kernel built outside interpreter mode cannot be called inside it), so it is set once here for the session.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory):
    from vidpost.models import WanAdapter

    path = tmp_path_factory.mktemp("tiny-wan")
    WanAdapter.tiny(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_hunyuan_dir(tmp_path_factory):
    from vidpost.models import HunyuanVideoAdapter

    path = tmp_path_factory.mktemp("tiny-hunyuan")
    HunyuanVideoAdapter.tiny(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    """12 short clips (a colour ramp per caption) + one corrupt file, as a JSONL manifest."""
    import json

    from vidpost.media.video_io import write_video

    root = tmp_path_factory.mktemp("tiny-data")
    (root / "v").mkdir()
    rows = []
    names = ["red", "green", "blue"]
    for i in range(12):
        c = i % 3
        v = torch.zeros(3, 9, 32, 32)
        v[c] = torch.linspace(0, 1, 9).view(9, 1, 1) * (0.5 + 0.5 * (i % 2))
        write_video(root / "v" / f"{i}.mp4", v, fps=8)
        rows.append({"video": f"v/{i}.mp4", "caption": f"a {names[c]} screen"})
    (root / "v" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 10)
    rows.append({"video": "v/corrupt.mp4", "caption": "broken"})
    rows.append({"video": "v/missing.mp4", "caption": "missing"})
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root / "manifest.jsonl"


GRPO_PROMPTS = ["a red circle moves right", "a blue square moves left", "a green triangle stays still", "a dot"]


@pytest.fixture(scope="session")
def grpo_overrides() -> Callable[..., list[str]]:
    """`grpo_overrides(output_dir, model, *extra)`: `vidpost rl` (algorithm grpo) overrides for a run of seconds on a miniature
    (2 prompts × 3 samples, 5 frames at 16×16, 4 steps, the weight-free temporal + motion rewards, LoRA rank 4, no
    guard, checkpoints or tensorboard); `extra` comes after the defaults, so it overrides them."""

    def make(output_dir: Path, model: Path, *extra: str) -> list[str]:
        return [
            f"output_dir={output_dir}",
            f"model.path={model}",
            f"rollout.prompts={json.dumps(GRPO_PROMPTS)}",
            "rollout.prompts_per_step=2",
            "rollout.group_size=3",
            "rollout.num_frames=5",
            "rollout.height=16",
            "rollout.width=16",
            "rollout.steps=4",
            "rollout.guidance_scale=3.0",
            "rewards.spec={temporal: 1.0, motion: 0.5}",
            "train.micro_batch=6",
            "grpo.timestep_fraction=0.5",
            "optim.lr=1e-3",
            "lora.rank=4",
            "guard.every=0",
            "checkpoint.every=0",
            "log.tensorboard=false",
            *extra,
        ]

    return make


# -- miniature language models (the prompt enhancer and its training) -------------------------------------------------

CHAT_SPECIALS = ["<unk>", "<pad>", "<|end|>", "<|im_start|>", "<|im_end|>"]
CHAT_WORDS = "a the cat dog red circle moves to right left runs on grass camera slow light video sign open".split()
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_chat_tokenizer():
    """A word-level Unigram tokenizer (known words one token, any other ASCII character by itself), ChatML."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    pieces = [(s, 0.0) for s in CHAT_SPECIALS] + [("▁" + w, -1.0) for w in CHAT_WORDS] + [("▁", -2.0)]
    pieces += [(c, -8.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHATML
    return fast


def build_chat_lm(path: Path, *, head_std: float, never_stop: bool, **config) -> Path:
    """A 2-layer Llama (hidden 32) with the ChatML test tokenizer and a random init (seed 0), saved to `path`.
    `head_std` is the scale of the output head (the LoRA does not adapt it); `never_stop` zeroes `<|im_end|>`'s output
    row so greedy decoding always runs to the limit; `config` overrides LlamaConfig fields."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_chat_tokenizer()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[im_end, tokenizer.eos_token_id],
    )
    model = LlamaForCausalLM(LlamaConfig(**{**settings, **config}))
    with torch.no_grad():
        model.lm_head.weight.normal_(0, head_std)
        if never_stop:
            model.lm_head.weight[im_end] = 0
    model.generation_config.eos_token_id = [im_end, tokenizer.eos_token_id]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    """The enhancer's test LM: weights large enough that the output depends on the prompt, not just its end, and
    `<|im_end|>` never the argmax, so greedy decoding always runs to the limit."""
    return build_chat_lm(
        tmp_path_factory.mktemp("tiny-llm"),
        head_std=2.0,
        never_stop=True,
        max_position_embeddings=4096,
        initializer_range=0.5,
    )


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory):
    """The rewriter-training test LM: default init, an output head with the scale of a trained one, free to stop."""
    return build_chat_lm(tmp_path_factory.mktemp("tiny-lm"), head_std=1.0, never_stop=False)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    """A 1-layer BERT with a word vocabulary (the intent encoder of the rewriter's GRPO)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] a the red circle moves to right left cat dog sign open grass".split()
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def write_pairs(tmp_path, monkeypatch) -> Callable[[list[tuple[str, str]]], Path]:
    """`write_pairs([(prompt, target), ...])`: a rewriter pairs file in `tmp_path` (each target also its reward
    prompt), with the rewriter cache (`VIDPOST_CACHE`) moved into `tmp_path`."""
    monkeypatch.setenv("VIDPOST_CACHE", str(tmp_path / "vidpost-cache"))

    def write(pairs: list[tuple[str, str]]) -> Path:
        f = tmp_path / "pairs.jsonl"
        f.write_text("".join(json.dumps({"prompt": p, "target": t, "reward_prompt": t}) + "\n" for p, t in pairs))
        return f

    return write
