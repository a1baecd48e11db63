"""Canonical captions, their parser, paraphrases and noisy captions of the Shapes world."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vidpost.shapes.captions import (
    COLOUR_SYNONYMS,
    NOISY_CAPTION_MIX,
    caption,
    noisy_caption,
    noisy_caption_kind,
    paraphrase,
    parse_caption,
)
from vidpost.shapes.world import ObjectSpec, SceneSpec, random_scene


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (SceneSpec([ObjectSpec("circle", "red", "right")]), "a red circle moves to the right"),
        (
            SceneSpec([ObjectSpec("square", "blue", "up", "fast", "small")], "white"),
            "a small blue square moves quickly up on a white background",
        ),
        (SceneSpec([ObjectSpec("triangle", "green", "still")]), "a green triangle stays still"),
        (
            SceneSpec(
                [
                    ObjectSpec("diamond", "orange", "up-left", "slow"),
                    ObjectSpec("circle", "cyan", "down", size="large"),
                ]
            ),
            "an orange diamond moves slowly up and to the left and a large cyan circle moves down",
        ),
    ],
)
def test_canonical_examples(spec, text):
    assert caption(spec) == text
    assert parse_caption(text) == spec


def test_round_trip_many_random_specs():
    rng = np.random.default_rng(0)
    captions = set()
    for _ in range(3000):
        spec = random_scene(rng)
        text = caption(spec)
        assert parse_caption(text) == spec, text
        captions.add(text)
    assert len(captions) > 2500  # the vocabulary is rich enough that random scenes rarely repeat


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("a pink circle moves up", "colour 'pink'"),
        ("a red blob moves up", "shape 'blob'"),
        ("a red circle moves sideways", "direction 'sideways'"),
        ("a red circle dances", "motion 'dances'"),
        ("red circle moves up", "'a' or 'an'"),
        ("a red circle moves up on a blue background", "background 'blue'"),
        ("", "no object"),
    ],
)
def test_parse_errors_name_the_part(text, part):
    with pytest.raises(ValueError, match=part):
        parse_caption(text)


def _colour_words(text: str) -> set[str]:
    words = set(text.lower().replace(",", " ").replace(":", " ").split())
    return {colour for colour, synonyms in COLOUR_SYNONYMS.items() if words & set(synonyms)}


def test_paraphrases_differ_and_keep_colour_semantics():
    rng = np.random.default_rng(1)
    texts = []
    for _ in range(1000):
        spec = random_scene(rng)
        text = paraphrase(spec, rng)
        texts.append(text)
        assert text != caption(spec)
        named = _colour_words(text)
        assert {o.colour for o in spec.objects} <= named, text  # every object's colour, by some synonym
        assert named - {o.colour for o in spec.objects} <= {spec.background}, text  # and no other colour
    assert sum("→" in t or "←" in t or "↑" in t or "↓" in t for t in texts) > 50  # shorthand arrows occur
    assert sum(not t.startswith(("a ", "an ")) for t in texts) > 300  # word-order changes / dropped articles
    assert len(set(texts)) > 990


def test_paraphrase_is_deterministic_given_the_rng():
    spec = SceneSpec([ObjectSpec("circle", "red", "right")])
    first = [paraphrase(spec, np.random.default_rng(i)) for i in range(20)]
    assert first == [paraphrase(spec, np.random.default_rng(i)) for i in range(20)]
    assert len(set(first)) > 10


def test_noisy_caption_mix():
    rng = np.random.default_rng(2)
    assert sum(NOISY_CAPTION_MIX.values()) == pytest.approx(1.0)
    kinds = Counter(noisy_caption_kind(rng) for _ in range(20000))
    for kind, p in NOISY_CAPTION_MIX.items():
        assert kinds[kind] / 20000 == pytest.approx(p, abs=0.015), kind

    spec = SceneSpec([ObjectSpec("square", "blue", "up"), ObjectSpec("circle", "red", "left")], "grey")
    canonical = caption(spec)
    assert noisy_caption(spec, rng, "canonical") == canonical
    assert noisy_caption(spec, rng, "empty") == ""
    for _ in range(20):
        wrong = noisy_caption(spec, rng, "wrong")
        assert wrong != canonical and parse_caption(wrong) != spec  # a parseable caption of another scene
        assert len(noisy_caption(spec, rng, "vague")) < len(canonical)
        assert noisy_caption(spec, rng, "partial") != canonical
    texts = [noisy_caption(spec, rng) for _ in range(2000)]
    assert 0.40 < texts.count(canonical) / len(texts) < 0.50
    with pytest.raises(ValueError, match="unknown noisy caption kind"):
        noisy_caption(spec, rng, "sarcastic")
