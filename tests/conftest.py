"""Shared fixtures: miniature models of the real classes saved to disk and loaded back like real weights."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


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
