"""The README's "Loading vidpost models in stock diffusers" snippet runs as written and reproduces vidpost's sampler."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Loading vidpost models in stock diffusers"


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, "the README section is missing"
    after = text.split(SECTION, 1)[1]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    assert match, "no python snippet in the section"
    return match.group(1)


@pytest.mark.skipif(
    not (ROOT / "assets/shapes/sft").exists(), reason="the shipped Shapes model is not in this checkout"
)
def test_readme_snippet_matches_our_sampler(monkeypatch):
    from vidpost.models import load
    from vidpost.models.sampling import sample

    monkeypatch.chdir(ROOT)  # the snippet names the model folder relative to the repository
    scope: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), scope)
    frames = scope["frames"]
    assert frames.shape == (17, 64, 64, 3)

    adapter = load("shapes")
    assert adapter.max_sequence_length == 32
    ours = sample(
        adapter,
        ["a red circle moves to the right"],
        num_frames=17,
        height=64,
        width=64,
        num_inference_steps=20,
        guidance_scale=5.0,
        shift=adapter.default_shift,
        seed=0,
    )[0]  # [C, T, H, W]
    np.testing.assert_allclose(frames, ours.permute(1, 2, 3, 0).numpy(), atol=1e-5, rtol=0)
    assert frames.std() > 0.01
