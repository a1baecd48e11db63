"""Fault injection: what a user meets when files are damaged or combined wrongly gets one line and a fix, never a
traceback, and nothing is silently wrong."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import pytest

from vidpost.models import LoraBaseMismatch, ModelPathError, WanAdapter, load
from vidpost.models.provenance import lora_base, model_fingerprint, stamp_lora
from vidpost.training.config import LoraConfig
from vidpost.training.lora import add_lora, lora_state_dict


def test_truncated_weights_are_one_line_exit_2(tiny_wan_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_wan_dir, broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelPathError, match="truncated or corrupt"):
        load(broken)
    out = subprocess.run(
        [sys.executable, "-m", "vidpost.cli", "generate", "--model", str(broken), "--prompt", "a dot"]
        + ["--out", str(tmp_path / "x.mp4")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "truncated or corrupt" in lines[0], out.stderr


@pytest.fixture(scope="module")
def two_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    a, b = root / "wan-a", root / "wan-b"
    WanAdapter.tiny(seed=0).save_pretrained(a)
    WanAdapter.tiny(seed=1).save_pretrained(b)
    lora = root / "lora"
    adapter = load(a)
    add_lora(adapter, LoraConfig(rank=2, alpha=2.0))
    adapter.save_lora(lora, lora_state_dict(adapter.transformer))
    stamp_lora(lora, a)
    return a, b, lora


def test_a_lora_on_another_base_warns_with_both_names(two_bases):
    a, b, lora = two_bases
    assert model_fingerprint(a) != model_fingerprint(b)
    assert lora_base(lora)["name"].endswith("wan-a")
    with pytest.warns(LoraBaseMismatch) as caught:
        load(b, lora=lora)
    message = str(caught[0].message)
    assert "wan-a" in message and "wan-b" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraBaseMismatch)
        load(a, lora=lora)  # its own base: no warning


def test_stamped_lora_still_loads_in_stock_diffusers(two_bases):
    a, _, lora = two_bases
    pipe = load(a).pipeline()
    pipe.load_lora_weights(str(lora))
