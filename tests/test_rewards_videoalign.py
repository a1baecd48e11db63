"""VideoAlign reward: a miniature Qwen2-VL + reward head saved in the reward's folder layout and loaded back.

The tokenizer, processor, model, head and reward config are built in memory (`vidpost.rewards.testing`), written
with the real savers (`save_pretrained`, safetensors) and read through `VideoAlignReward`; an independent per-video
computation with the saved model, processor and head checks the reward's batching, pooling and normalisation.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vidpost.rewards.base import REGISTRY, RewardPathError, build_reward
from vidpost.rewards.testing import VIDEOALIGN_CHAT_TEMPLATE, tiny_videoalign
from vidpost.rewards.videoalign import SPECIAL_TOKENS, VideoAlignReward

PROMPTS = ["a red cat runs left", "a small blue dog walks slowly to the right in a large scene"]
TEMPLATE = "rate this video for the prompt : {prompt}"
STATS = {"mean": {"VQ": 0.5, "MQ": -0.25, "TA": 1.0}, "std": {"VQ": 2.0, "MQ": 0.5, "TA": 4.0}}
FRAME_IDX = [0, 2, 5, 7]  # 4 evenly spaced frames of 8, first and last included


def make_checkpoint(root, **options):
    """A miniature VideoAlign folder whose tokenizer knows the test prompts and whose config has the test's
    prompt template and statistics; `options` go to `tiny_videoalign` (reward_token, head, legacy_keys, ...)."""
    return tiny_videoalign(root, words=PROMPTS, prompt_template=TEMPLATE, stats=STATS, frames=4, size=56, **options)


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
    other = make_checkpoint(tmp_path / "chat", chat_template=VIDEOALIGN_CHAT_TEMPLATE)
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
