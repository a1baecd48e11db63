"""VideoAlign reward: a miniature Qwen2-VL + reward head saved in the reward's folder layout and loaded back.

The tokenizer, processor, model, head and reward config are built in memory, written with the real savers
(`save_pretrained`, safetensors) and read through `VideoAlignReward`; an independent per-video computation with
the saved model, processor and head checks the reward's batching, pooling and normalisation.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vidpost.rewards.base import REGISTRY, RewardPathError, build_reward
from vidpost.rewards.videoalign import DEFAULT_PROMPT_TEMPLATE, SPECIAL_TOKENS, VideoAlignReward

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
PROMPTS = ["a red cat runs left", "a small blue dog walks slowly to the right in a large scene"]
TEMPLATE = "rate this video for the prompt : {prompt}"
STATS = {"mean": {"VQ": 0.5, "MQ": -0.25, "TA": 1.0}, "std": {"VQ": 2.0, "MQ": 0.5, "TA": 4.0}}
FRAME_IDX = [0, 2, 5, 7]  # 4 evenly spaced frames of 8, first and last included
HIDDEN = 32

# Qwen2-VL's chat template, reduced to what one user turn with a video and a text needs.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% for content in message['content'] %}"
    "{% if content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(extra_specials=()):
    """A word-level fast tokenizer over the words the tests use, with Qwen2-VL's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = " ".join([DEFAULT_PROMPT_TEMPLATE, TEMPLATE, *PROMPTS, "system user assistant you are a helpful"])
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


def make_checkpoint(
    root, *, reward_token="last", head="file", legacy_keys=False, chat_template=None, seed=0, **cfg_extra
):
    """Write a miniature VideoAlign folder to `root` and return it."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = build_tokenizer(SPECIAL_TOKENS if reward_token == "special" else ())
    pixels = {"min_pixels": 28 * 28, "max_pixels": 56 * 56}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=chat_template,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": HIDDEN,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.save_pretrained(root)
    processor.save_pretrained(root)

    head_weight = torch.randn(3, HIDDEN)
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

    cfg = {
        "reward_attributes": ["VQ", "MQ", "TA"],
        **STATS,
        "prompt_template": TEMPLATE,
        "frames": 4,
        "size": 56,
        "reward_token": reward_token,
        **cfg_extra,
    }
    if reward_token == "special":
        cfg["special_tokens"] = list(SPECIAL_TOKENS)
    (root / "vidpost_reward.json").write_text(json.dumps(cfg))
    return root


def reference(root, videos, prompts, *, special=False):
    """Per-video VQ / MQ / TA computed without the reward class: frames, text, model, head, statistics."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(root).eval()
    processor = AutoProcessor.from_pretrained(root)
    weight = load_file(root / "reward_head.safetensors")["weight"]
    mean = torch.tensor([STATS["mean"][a] for a in ("VQ", "MQ", "TA")])
    std = torch.tensor([STATS["std"][a] for a in ("VQ", "MQ", "TA")])
    rows = []
    for video, prompt in zip(videos, prompts):
        clip = video[:, FRAME_IDX].transpose(0, 1)  # [k, C, H, W]
        clip = F.interpolate(clip, size=(56, 56), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        user = TEMPLATE.replace("{prompt}", prompt) + ("".join(SPECIAL_TOKENS) if special else "")
        text = (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|><|video_pad|><|vision_end|>{user}<|im_end|>\n<|im_start|>assistant\n"
        )
        inputs = processor(text=[text], videos=[clip], return_tensors="pt", do_resize=False, do_rescale=False)
        with torch.no_grad():
            hidden = model.model(**inputs).last_hidden_state[0]
        if special:
            ids = inputs["input_ids"][0]
            tok = processor.tokenizer
            pos = [int((ids == tok.convert_tokens_to_ids(t)).nonzero()[-1]) for t in SPECIAL_TOKENS]
            raw = torch.stack([weight[i] @ hidden[p] for i, p in enumerate(pos)])
        else:
            raw = weight @ hidden[-1]
        rows.append((raw - mean) / std)
    return torch.stack(rows)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("videoalign"))


@pytest.fixture(scope="module")
def videos():
    return torch.rand(2, 3, 8, 56, 56, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reward(ckpt):
    return VideoAlignReward(ckpt)


def test_scores_match_independent_computation(reward, ckpt, videos):
    out = reward(videos, PROMPTS)
    assert out.score.shape == (2,) and out.score.dtype == torch.float32
    assert torch.isfinite(out.score).all()
    assert set(out.components) == {"VQ", "MQ", "TA"}
    values = torch.stack([out.components[a] for a in ("VQ", "MQ", "TA")], dim=-1)
    # Batched with left padding (the prompts differ in length) vs one unpadded video at a time.
    torch.testing.assert_close(values, reference(ckpt, videos, PROMPTS), atol=1e-4, rtol=1e-4)
    # Default score: VideoAlign's Overall = VQ + MQ + TA.
    torch.testing.assert_close(out.score, values.sum(-1))
    # Normalisation is applied: undoing it gives the head's raw values, which differ from the normalised ones.
    raw = values * torch.tensor([2.0, 0.5, 4.0]) + torch.tensor([0.5, -0.25, 1.0])
    assert not torch.allclose(raw, values)
    # One video per forward pass gives the same numbers.
    single = VideoAlignReward(ckpt, batch_size=1)(videos, PROMPTS)
    torch.testing.assert_close(single.score, out.score, atol=1e-4, rtol=1e-4)


def test_prompt_changes_text_alignment(reward, videos):
    a = reward(videos, PROMPTS)
    b = reward(videos, [PROMPTS[1], PROMPTS[0]])
    assert not torch.allclose(a.components["TA"], b.components["TA"], atol=1e-6, rtol=0)
    # Same inputs, same scores.
    torch.testing.assert_close(reward(videos, PROMPTS).score, a.score)


def test_weights_and_frame_count(ckpt, videos):
    base = VideoAlignReward(ckpt)(videos, PROMPTS)
    ta_only = VideoAlignReward(ckpt, weights={"TA": 1.0})(videos, PROMPTS)
    torch.testing.assert_close(ta_only.score, base.components["TA"])
    mean = VideoAlignReward(ckpt, weights={"VQ": 1 / 3, "MQ": 1 / 3, "TA": 1 / 3})(videos, PROMPTS)
    torch.testing.assert_close(mean.score, base.score / 3, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown attributes"):
        VideoAlignReward(ckpt, weights={"Overall": 1.0})
    by_fps = VideoAlignReward(ckpt, frames=None, video_fps=16)
    by_fps.frames, by_fps.fps = None, 2.0
    assert by_fps._frame_count(32) == 4
    by_fps.size = None  # no configured size: the video's own, on Qwen2-VL's patch grid within its pixel budget
    assert by_fps._target_size(56, 56) == (56, 56)
    h, w = by_fps._target_size(60, 90)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 56 * 56 and w > h


def test_head_inside_weights_and_legacy_keys(tmp_path, ckpt, reward, videos):
    other = make_checkpoint(tmp_path / "inside", head="inside", legacy_keys=True)
    assert not (other / "reward_head.safetensors").exists()
    keys = load_file(other / "model.safetensors").keys()
    assert "rm_head.weight" in keys and any(k.startswith("visual.") for k in keys)
    out = VideoAlignReward(other)(videos, PROMPTS)
    torch.testing.assert_close(out.score, reward(videos, PROMPTS).score, atol=1e-5, rtol=1e-5)


def test_chat_template_path_matches_fallback(tmp_path, reward, videos):
    other = make_checkpoint(tmp_path / "chat", chat_template=CHAT_TEMPLATE)
    loaded = VideoAlignReward(other)
    assert loaded.processor.chat_template
    assert loaded.chat_text("a cat") == reward.chat_text("a cat")
    torch.testing.assert_close(loaded(videos, PROMPTS).score, reward(videos, PROMPTS).score, atol=1e-5, rtol=1e-5)


def test_special_reward_tokens(tmp_path, videos):
    root = make_checkpoint(tmp_path / "special", reward_token="special")
    out = VideoAlignReward(root)(videos, PROMPTS)
    values = torch.stack([out.components[a] for a in ("VQ", "MQ", "TA")], dim=-1)
    torch.testing.assert_close(values, reference(root, videos, PROMPTS, special=True), atol=1e-4, rtol=1e-4)


def test_missing_files_name_what_is_expected(tmp_path, ckpt):
    broken = tmp_path / "no-head"
    shutil.copytree(ckpt, broken)
    (broken / "reward_head.safetensors").unlink()
    with pytest.raises(RewardPathError, match=r"reward_head\.safetensors"):
        VideoAlignReward(broken)
    (broken / "vidpost_reward.json").unlink()
    with pytest.raises(RewardPathError, match=r"vidpost_reward\.json or model_config\.json"):
        VideoAlignReward(broken)
    with pytest.raises(RewardPathError, match="does not exist"):
        VideoAlignReward(tmp_path / "nowhere")
    with pytest.raises(RewardPathError, match="no weights path"):
        VideoAlignReward(None)


def test_build_reward_by_name(ckpt, videos):
    reward = build_reward("videoalign", path=ckpt, device="cpu", dtype="float32")
    assert "videoalign" in REGISTRY and isinstance(reward, VideoAlignReward)
    assert reward(videos, PROMPTS).score.shape == (2,)
