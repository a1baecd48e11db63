"""vidpost.shapes — the Shapes world, the embedded default of vidpost.

Procedural videos of coloured shapes moving on plain backgrounds (`world`), their canonical captions, user-style
paraphrases and noisy web captions (`captions`), a deterministic verifier used as reward and success measure
(`verifier`), degradations to test it (`degrade`), fixed versioned train / held-out splits (`splits`), an mp4 +
JSONL exporter (`export`); its command line is `vidpost shapes` (`vidpost.pipelines.shapes`). Imports no training code.
"""

from .captions import caption, noisy_caption, paraphrase, parse_caption
from .splits import heldout_prompts, is_heldout, train_specs
from .verifier import ATTRIBUTES, verifier_accuracy, verify, verify_batch
from .world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    SPEEDS,
    ObjectSpec,
    SceneSpec,
    mutate,
    random_scene,
    render,
)

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLOURS",
    "DIRECTIONS",
    "SHAPES",
    "SIZES",
    "SPEEDS",
    "ObjectSpec",
    "SceneSpec",
    "caption",
    "heldout_prompts",
    "is_heldout",
    "mutate",
    "noisy_caption",
    "paraphrase",
    "parse_caption",
    "random_scene",
    "render",
    "train_specs",
    "verifier_accuracy",
    "verify",
    "verify_batch",
]
