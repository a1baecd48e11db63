"""The Shapes world's verifier as a reward: graded (mean of the eight attribute scores) or binary (all correct).

Prompts are canonical Shapes captions; the scene each prompt asks for is parsed from it. A prompt that does
not parse scores 0 and is counted in the `unparsed` component (a user-style prompt should be mapped to its
canonical caption by the caller — the held-out split carries both). Components: every attribute's graded score,
`success` (all attributes correct) and `unparsed`.

`attributes` restricts the score to a subset — graded: their mean; binary: 1 when every one of them is correct —
so the verifier can split into a training reward and an independent guard: e.g. train on what the prompt asks
(colour, shape, size, direction, speed, background, count) and guard on `smoothness`, which no part of the
training reward measures. `success` in the components is always the full eight-attribute success.
"""

from __future__ import annotations

import numpy as np
import torch

from vidpost.shapes.captions import parse_caption
from vidpost.shapes.verifier import ATTRIBUTES, verify

from .base import Reward, RewardOutput, register


class VerifierReward(Reward):
    name = "verifier"

    def __init__(
        self, *, mode: str = "graded", attributes: list[str] | None = None, device: str = "cpu", dtype=None
    ) -> None:
        super().__init__(device="cpu", dtype=torch.float32)  # numpy code: always on the CPU
        if mode not in ("graded", "binary"):
            raise ValueError(f"verifier reward: mode must be 'graded' or 'binary', got {mode!r}")
        unknown = sorted(set(attributes or ()) - set(ATTRIBUTES))
        if unknown:
            raise ValueError(f"verifier reward: unknown attributes {unknown}; known: {list(ATTRIBUTES)}")
        if attributes is not None and not attributes:
            raise ValueError("verifier reward: `attributes` is empty")
        self.mode, self.attributes = mode, list(attributes) if attributes else None

    def _score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        arrays = videos.numpy()
        rows = {k: np.zeros(len(prompts)) for k in (*ATTRIBUTES, "score", "success", "unparsed")}
        subset_ok = np.zeros(len(prompts))
        for i, (video, prompt) in enumerate(zip(arrays, prompts)):
            try:
                spec = parse_caption(prompt)
            except ValueError:
                rows["unparsed"][i] = 1.0
                continue
            result = verify(video, spec)
            for key in (*ATTRIBUTES, "score"):
                rows[key][i] = float(result[key])
            rows["success"][i] = float(result["success"])
            subset_ok[i] = float(all(result[f"{a}_ok"] for a in self.attributes or ATTRIBUTES))
        if self.mode == "binary":
            score = subset_ok
        elif self.attributes is not None:
            score = np.mean([rows[a] for a in self.attributes], axis=0)
        else:
            score = rows["score"]
        components = {k: torch.from_numpy(v).float() for k, v in rows.items() if k != "score"}
        return RewardOutput(torch.from_numpy(score).float(), components)


@register("verifier", bounds=(0.0, 1.0))
def _graded(**config) -> VerifierReward:
    return VerifierReward(**{"mode": "graded", **config})


@register("verifier_binary", bounds=(0.0, 1.0))
def _binary(**config) -> VerifierReward:
    return VerifierReward(**{**config, "mode": "binary"})
