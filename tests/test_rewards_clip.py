"""CLIP-based rewards (clip, hps, pickscore, aesthetic) on miniature models saved in the real checkpoint formats.

Each test builds a tiny random model (`vidpost.rewards.testing`) saved the way the real weights ship (a
transformers `save_pretrained` folder, an open_clip / HPS torch file or safetensors, an aesthetic head `.pth`),
loads it back through the reward's own loader and checks the score against an independent computation with the
model itself.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import vidpost.rewards.aesthetic  # noqa: F401 - registers the rewards under test
import vidpost.rewards.clip_score  # noqa: F401
import vidpost.rewards.hps  # noqa: F401
import vidpost.rewards.pickscore  # noqa: F401
from vidpost.rewards.base import RewardPathError, build_reward, normalize, resize_frames
from vidpost.rewards.testing import (
    ImprovedAestheticPredictor,
    tiny_aesthetic_head,
    tiny_hf_clip,
    tiny_open_clip,
)

PROMPTS = ["a red circle moves left", "a blue square stays still"]
OTHER = ["a green triangle runs fast", "a dog walks"]
FRAME_IDX = [0, 2, 4]  # select_frames(T=5, k=3)
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.3, 0.35)  # not CLIP's, to see that preprocessor_config.json is read

OPEN_CLIP_SIZES = dict(embed_dim=16, image_size=32, patch_size=8, width=32, head_width=16, layers=1, context_length=16)


@pytest.fixture(scope="module")
def videos():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 5, 32, 32, generator=g)


def _frames(videos):
    return videos[:, :, FRAME_IDX].transpose(1, 2).flatten(0, 1)  # [B·3, C, H, W]


# ------------------------------------------------------------------------------------- transformers CLIPModel


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    return tiny_hf_clip(tmp_path_factory.mktemp("tiny-hf-clip"), image_size=32, mean=MEAN, std=STD, seed=0)


def _hf_reference(path, videos, prompts):
    """(cosine [B], logit scale) by CLIPModel's own forward on the chosen frames."""
    from transformers import AutoTokenizer, CLIPModel

    model, tok = CLIPModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    pixels = normalize(resize_frames(_frames(videos), 32), MEAN, STD)
    ids = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=pixels)
    img = out.image_embeds.view(2, len(FRAME_IDX), -1)
    cos = (img * out.text_embeds[:, None]).sum(-1).mean(1)
    return cos, model.logit_scale.exp().item()


def test_clip_transformers(hf_clip_dir, videos):
    reward = build_reward("clip", path=str(hf_clip_dir), frames=3)
    assert reward.clip.kind == "transformers" and reward.clip.mean == MEAN
    out = reward(videos, PROMPTS)
    assert out.score.shape == (2,) and out.score.dtype == torch.float32 and torch.isfinite(out.score).all()
    assert torch.equal(out.components["clip"], out.score)
    assert torch.equal(reward(videos, PROMPTS).score, out.score)
    cos, _ = _hf_reference(hf_clip_dir, videos, PROMPTS)
    torch.testing.assert_close(out.score, cos, atol=1e-5, rtol=0)
    assert not torch.allclose(reward(videos, OTHER).score, out.score, atol=1e-4)


def test_pickscore(hf_clip_dir, videos):
    reward = build_reward("pickscore", path=hf_clip_dir, frames=3)
    out = reward(videos, PROMPTS)
    cos, scale = _hf_reference(hf_clip_dir, videos, PROMPTS)
    assert out.score.shape == (2,) and torch.isfinite(out.score).all()
    torch.testing.assert_close(out.components["cos"], cos, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.score, scale * cos, atol=1e-4, rtol=0)
    assert torch.equal(reward(videos, PROMPTS).score, out.score)
    assert not torch.allclose(reward(videos, OTHER).score, out.score, atol=1e-4)


def test_transformers_path_errors(hf_clip_dir, tmp_path):
    with pytest.raises(RewardPathError, match="config.json"):
        build_reward("pickscore", path=tmp_path / "missing")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text((hf_clip_dir / "config.json").read_text())
    with pytest.raises(RewardPathError, match="model.safetensors"):
        build_reward("clip", path=incomplete)
    (incomplete / "model.safetensors").write_bytes((hf_clip_dir / "model.safetensors").read_bytes())
    with pytest.raises(RewardPathError, match="tokenizer.json"):
        build_reward("clip", path=incomplete)
    with pytest.raises(RewardPathError, match="no weights path"):
        build_reward("clip")


# ------------------------------------------------------------------------------------------------- open_clip


@pytest.fixture(scope="module")
def open_clip_files(tmp_path_factory):
    """A tiny open_clip CLIP: its JSON config, the HPS-style torch file and a safetensors copy."""
    return tiny_open_clip(tmp_path_factory.mktemp("tiny-open-clip"), seed=1, **OPEN_CLIP_SIZES)


def _open_clip_reference(model, pixels, prompts):
    import open_clip

    with torch.no_grad():
        img, txt, _ = model(pixels, open_clip.tokenize(prompts, context_length=16))
    return (img.view(2, -1, img.shape[-1]) * txt[:, None]).sum(-1).mean(1)


@pytest.mark.parametrize("weights", ["tiny.safetensors", "bare.bin", "HPS_v2.1_compressed.pt"])
def test_clip_open_clip(open_clip_files, videos, weights):
    reward = build_reward("clip", path=open_clip_files["dir"] / weights, arch=open_clip_files["arch"], frames=3)
    assert reward.clip.kind == "open_clip"
    out = reward(videos, PROMPTS)
    assert out.score.shape == (2,) and torch.isfinite(out.score).all()
    pixels = normalize(resize_frames(_frames(videos), 32))
    torch.testing.assert_close(
        out.score, _open_clip_reference(open_clip_files["model"], pixels, PROMPTS), atol=1e-5, rtol=0
    )
    assert not torch.allclose(reward(videos, OTHER).score, out.score, atol=1e-4)


def test_clip_open_clip_needs_arch(open_clip_files):
    with pytest.raises(ValueError, match="arch"):
        build_reward("clip", path=open_clip_files["dir"] / "tiny.safetensors")


def test_clip_open_clip_folder(open_clip_files, videos, tmp_path):
    """An open_clip Hub-style folder: open_clip_config.json {model_cfg, preprocess_cfg} + open_clip_model.safetensors."""
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": open_clip_files["cfg"], "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)}})
    )
    (tmp_path / "open_clip_model.safetensors").write_bytes((open_clip_files["dir"] / "tiny.safetensors").read_bytes())
    out = build_reward("clip", path=tmp_path, frames=3)(videos, PROMPTS)
    pixels = normalize(resize_frames(_frames(videos), 32), MEAN, STD)
    torch.testing.assert_close(
        out.score, _open_clip_reference(open_clip_files["model"], pixels, PROMPTS), atol=1e-5, rtol=0
    )


def test_hps(open_clip_files, videos):
    reward = build_reward(
        "hps", path=open_clip_files["dir"] / "HPS_v2.1_compressed.pt", arch=open_clip_files["arch"], frames=3
    )
    out = reward(videos, PROMPTS)
    assert out.score.shape == (2,) and torch.isfinite(out.score).all()
    assert torch.equal(reward(videos, PROMPTS).score, out.score)
    pixels = normalize(_frames(videos))  # square 32×32 frames: the letterbox is the identity
    expected = _open_clip_reference(open_clip_files["model"], pixels, PROMPTS)
    torch.testing.assert_close(out.score, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.components["hps"], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(reward(videos, OTHER).score, out.score, atol=1e-4)
    # a folder holding the checkpoint, and the safetensors conversion, load the same weights
    folder = build_reward("hps", path=open_clip_files["dir"], arch=open_clip_files["arch"], frames=3)
    torch.testing.assert_close(folder(videos, PROMPTS).score, out.score, atol=1e-6, rtol=0)
    st = build_reward("hps", path=open_clip_files["dir"] / "tiny.safetensors", arch=open_clip_files["arch"], frames=3)
    torch.testing.assert_close(st(videos, PROMPTS).score, out.score, atol=1e-6, rtol=0)


def test_hps_letterbox(open_clip_files):
    """Non-square frames: longer side to 32, black bars top and bottom (HPSv2's ResizeMaxSize), then normalised."""
    g = torch.Generator().manual_seed(3)
    wide = torch.rand(2, 3, 1, 16, 32, generator=g)
    reward = build_reward("hps", path=open_clip_files["dir"] / "HPS_v2.1_compressed.pt", arch=open_clip_files["arch"])
    padded = F.pad(wide[:, :, 0], (0, 0, 8, 8), value=0.0)
    expected = _open_clip_reference(open_clip_files["model"], normalize(padded), PROMPTS)
    torch.testing.assert_close(reward(wide, PROMPTS).score, expected, atol=1e-5, rtol=0)


def test_hps_path_errors(open_clip_files, tmp_path):
    with pytest.raises(RewardPathError, match="HPS_v2.1_compressed.pt") as err:
        build_reward("hps", path=tmp_path / "nope", arch=open_clip_files["arch"])
    assert "does not exist" in str(err.value)
    with pytest.raises(RewardPathError, match="HPS_v2.1_compressed.pt"):
        build_reward("hps", path=tmp_path, arch=open_clip_files["arch"])  # an empty folder
    with pytest.raises(RewardPathError, match="open_clip_config.json"):
        build_reward("clip", path=tmp_path / "nope")


def test_weights_only_loading(open_clip_files, tmp_path):
    """A checkpoint that needs arbitrary unpickling is refused, not executed."""
    bad = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": open_clip_files["model"].state_dict(), "extra": nn.Identity()}, bad)
    with pytest.raises(ValueError, match="weights_only"):
        build_reward("hps", path=bad, arch=open_clip_files["arch"])


# ------------------------------------------------------------------------------------------------- aesthetic


def test_aesthetic_mlp_head_open_clip(open_clip_files, videos, tmp_path):
    saved = tiny_aesthetic_head(tmp_path, 16, kind="mlp", seed=2)
    assert saved == tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    head = ImprovedAestheticPredictor(16).eval()
    head.load_state_dict(torch.load(saved, weights_only=True))
    reward = build_reward(
        "aesthetic",
        path=tmp_path,
        clip_path=open_clip_files["dir"] / "tiny.safetensors",
        arch=open_clip_files["arch"],
        frames=3,
    )
    out = reward(videos, PROMPTS)
    assert out.score.shape == (2,) and torch.isfinite(out.score).all()
    with torch.no_grad():
        emb = open_clip_files["model"].encode_image(normalize(resize_frames(_frames(videos), 32)), normalize=True)
        expected = head(emb).view(2, 3).mean(1)
    torch.testing.assert_close(out.score, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.components["aesthetic"], expected, atol=1e-5, rtol=0)
    assert torch.equal(reward(videos, OTHER).score, out.score)  # prompts are ignored
    assert not torch.allclose(reward(videos.flip(-1), PROMPTS).score, out.score, atol=1e-5)


@pytest.mark.parametrize("prefix", ["", "linear."])
def test_aesthetic_linear_head_transformers(hf_clip_dir, videos, tmp_path, prefix):
    from transformers import CLIPModel

    head = tiny_aesthetic_head(tmp_path / "head.safetensors", 16, kind="linear", prefix=prefix, seed=4)
    sd = load_file(head)
    assert set(sd) == {prefix + "weight", prefix + "bias"}
    lin = nn.Linear(16, 1)
    lin.load_state_dict({"weight": sd[prefix + "weight"], "bias": sd[prefix + "bias"]})
    reward = build_reward("aesthetic", path=head, clip_path=hf_clip_dir, frames=3)
    out = reward(videos, PROMPTS)
    model = CLIPModel.from_pretrained(hf_clip_dir).eval()
    with torch.no_grad():
        pixels = normalize(resize_frames(_frames(videos), 32), MEAN, STD)
        emb = F.normalize(model(input_ids=torch.tensor([[0, 1]]), pixel_values=pixels).image_embeds, dim=-1)
        expected = lin(emb).view(2, 3).mean(1)
    torch.testing.assert_close(out.score, expected, atol=1e-5, rtol=0)


def test_aesthetic_errors(hf_clip_dir, tmp_path):
    with pytest.raises(RewardPathError, match="sac\\+logos\\+ava1-l14-linearMSE.pth"):
        build_reward("aesthetic", path=tmp_path / "missing.pth", clip_path=hf_clip_dir)
    torch.save(nn.Linear(8, 1).state_dict(), tmp_path / "head.pth")
    with pytest.raises(RewardPathError, match="clip_path"):
        build_reward("aesthetic", path=tmp_path / "head.pth")
    with pytest.raises(ValueError, match="8-d"):
        build_reward("aesthetic", path=tmp_path / "head.pth", clip_path=hf_clip_dir)
    torch.save(nn.Linear(16, 4).state_dict(), tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="unrecognised aesthetic head"):
        build_reward("aesthetic", path=tmp_path / "bad.pth", clip_path=hf_clip_dir)
