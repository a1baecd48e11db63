"""Shared fixtures: miniature models of the real classes saved to disk and loaded back like real weights."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

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

    from vidpost.pipelines.video_io import write_video

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
    """`grpo_overrides(output_dir, model, *extra)`: `vidpost grpo` overrides for a run of seconds on a miniature
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
            "train.timestep_fraction=0.5",
            "optim.lr=1e-3",
            "lora.rank=4",
            "guard.every=0",
            "checkpoint.every=0",
            "log.tensorboard=false",
            *extra,
        ]

    return make
