"""Captions of Shapes-world scenes: canonical captions, their parser, user-style paraphrases and noisy web captions.

Canonical grammar (one caption per scene; defaults are left unsaid):

    caption   := object (" and " object)? [" on a " BACKGROUND " background"]   background omitted when "black"
    object    := ARTICLE [SIZE " "] COLOUR " " SHAPE " " motion                 size omitted when "medium"
    motion    := "stays still" | "moves " [ADVERB " "] PHRASE                    adverb omitted when "normal"
    ARTICLE   := "a" | "an" (before a vowel)      ADVERB := "slowly" (slow) | "quickly" (fast)
    PHRASE    := "to the left" | "to the right" | "up" | "down"
               | "up and to the left" | "up and to the right" | "down and to the left" | "down and to the right"

e.g. "a red circle moves to the right", "a small blue square moves quickly up on a white background",
"an orange triangle stays still and a large cyan diamond moves down and to the left". `parse_caption` inverts
`caption` exactly (`parse_caption(caption(s)) == s` for every valid scene); it accepts only this grammar (plus an
explicit "medium" / "on a black background") and raises `ValueError` naming the part it could not read.

`paraphrase(spec, rng)` writes the same scene the way a user might type it: colour / shape / motion synonyms
("crimson ball sliding right"), arrows and shorthand ("red dot →"), other word orders ("moving up: a blue box"),
dropped articles, random case, and — with probability 0.15 per prompt — one typo (two adjacent letters swapped)
in a word that is not a colour word, so a paraphrase always names each object's colour by a synonym from
`COLOUR_SYNONYMS`. It never returns the canonical caption.

`noisy_caption(spec, rng)` imitates scraped web captions, with the mix `NOISY_CAPTION_MIX`:
canonical 0.45 · paraphrase 0.15 · wrong 0.10 (the caption of `mutate(spec)` for a colour, shape or direction
change, so one attribute is false) · vague 0.10 ("a shape moving", "a red thing") · partial 0.10 (motion or
one of two objects left out) · empty 0.10 ("").
"""

from __future__ import annotations

import re

import numpy as np

from .world import (
    BACKGROUNDS,
    COLOURS,
    DEFAULT_BACKGROUND,
    DEFAULT_SIZE,
    DEFAULT_SPEED,
    DIRECTIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    SceneSpec,
    mutate,
)

__all__ = [
    "COLOUR_SYNONYMS",
    "NOISY_CAPTION_MIX",
    "caption",
    "noisy_caption",
    "noisy_caption_kind",
    "paraphrase",
    "parse_caption",
]

_DIRECTION_PHRASES: dict[str, str] = {
    "left": "to the left",
    "right": "to the right",
    "up": "up",
    "down": "down",
    "up-left": "up and to the left",
    "up-right": "up and to the right",
    "down-left": "down and to the left",
    "down-right": "down and to the right",
}
_SPEED_ADVERBS: dict[str, str] = {"slow": "slowly", "fast": "quickly"}

COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet", "cherry-red"),
    "orange": ("orange", "tangerine", "amber"),
    "yellow": ("yellow", "golden", "lemon"),
    "green": ("green", "emerald", "lime"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "azure", "cobalt"),
    "purple": ("purple", "violet", "lilac"),
    "white": ("white", "snow-white", "ivory"),
}
"""Words a paraphrase may use for each colour (the canonical name first)."""

_SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "dot", "disc", "round blob"),
    "square": ("square", "box", "block", "tile"),
    "triangle": ("triangle", "wedge", "pyramid shape", "tri"),
    "diamond": ("diamond", "rhombus", "lozenge"),
}
_SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "little", "smol"),
    "medium": ("", "", "", "medium", "mid-sized"),
    "large": ("large", "big", "huge", "giant"),
}
_DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left", "to the left", "leftward", "towards the left", "←"),
    "right": ("right", "to the right", "rightward", "towards the right", "→"),
    "up": ("up", "upward", "upwards", "towards the top", "↑"),
    "down": ("down", "downward", "downwards", "towards the bottom", "↓"),
    "up-left": ("up-left", "up and left", "diagonally up-left", "towards the top left", "↖"),
    "up-right": ("up-right", "up and right", "diagonally up-right", "towards the top right", "↗"),
    "down-left": ("down-left", "down and left", "diagonally down-left", "towards the bottom left", "↙"),
    "down-right": ("down-right", "down and right", "diagonally down-right", "towards the bottom right", "↘"),
}
_ARROWS = {d: words[-1] for d, words in _DIRECTION_WORDS.items()}
_MOVING_VERBS = ("sliding", "moving", "drifting", "gliding", "going", "travelling", "heading")
_STILL_WORDS = ("staying still", "not moving", "stationary", "sitting still", "motionless", "frozen in place")
_SPEED_WORDS: dict[str, tuple[str, ...]] = {
    "slow": ("slowly", "gently", "lazily", "slow"),
    "normal": ("", "", "", "steadily"),
    "fast": ("quickly", "fast", "rapidly", "zooming"),
}
_BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("on black", "on a dark background", "against black", "black bg"),
    "grey": ("on grey", "on a gray background", "against a grey backdrop", "grey bg"),
    "white": ("on white", "on a white background", "against white", "white bg"),
}
_JOINERS = (" and ", " & ", ", ", " plus ", " while ")

NOISY_CAPTION_MIX: dict[str, float] = {
    "canonical": 0.45,
    "paraphrase": 0.15,
    "wrong": 0.10,
    "vague": 0.10,
    "partial": 0.10,
    "empty": 0.10,
}
"""Probability of each kind of noisy web caption (see the module doc)."""

_VAGUE = (
    "a shape moving",
    "an object",
    "something moves",
    "abstract animation",
    "a colourful shape",
    "simple geometric video",
    "a {colour} thing",
    "a {shape}",
    "something moving {direction}",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_caption(obj: ObjectSpec) -> str:
    words = ([obj.size] if obj.size != DEFAULT_SIZE else []) + [obj.colour, obj.shape]
    if obj.direction == "still":
        motion = "stays still"
    else:
        adverb = _SPEED_ADVERBS.get(obj.speed)
        motion = "moves " + (adverb + " " if adverb else "") + _DIRECTION_PHRASES[obj.direction]
    return f"{_article(words[0])} {' '.join(words)} {motion}"


def caption(spec: SceneSpec) -> str:
    """The canonical caption of `spec` (see the grammar in the module doc)."""
    text = " and ".join(_object_caption(o) for o in spec.objects)
    if spec.background != DEFAULT_BACKGROUND:
        text += f" on a {spec.background} background"
    return text


_ADVERB_SPEEDS = {v: k for k, v in _SPEED_ADVERBS.items()}
_PHRASE_DIRECTIONS = {v: k for k, v in _DIRECTION_PHRASES.items()}


def _parse_object(text: str) -> ObjectSpec:
    words = text.split(" ")
    if not words or words[0] not in ("a", "an"):
        raise ValueError(f"expected 'a' or 'an' at the start of {text!r}")
    i = 1
    size = DEFAULT_SIZE
    if i < len(words) and words[i] in SIZES:
        size, i = words[i], i + 1
    if i >= len(words) or words[i] not in COLOURS:
        got = words[i] if i < len(words) else "<end>"
        raise ValueError(f"unknown colour {got!r} in {text!r}; expected one of {list(COLOURS)}")
    colour, i = words[i], i + 1
    if i >= len(words) or words[i] not in SHAPES:
        got = words[i] if i < len(words) else "<end>"
        raise ValueError(f"unknown shape {got!r} in {text!r}; expected one of {list(SHAPES)}")
    shape, i = words[i], i + 1
    motion = " ".join(words[i:])
    if motion == "stays still":
        return ObjectSpec(shape=shape, colour=colour, direction="still", size=size)
    if not motion.startswith("moves "):
        raise ValueError(f"unreadable motion {motion!r} in {text!r}; expected 'stays still' or 'moves ...'")
    rest = motion[len("moves ") :]
    speed = DEFAULT_SPEED
    first, _, tail = rest.partition(" ")
    if first in _ADVERB_SPEEDS:
        speed, rest = _ADVERB_SPEEDS[first], tail
    if rest not in _PHRASE_DIRECTIONS:
        raise ValueError(f"unknown direction {rest!r} in {text!r}; expected one of {list(_PHRASE_DIRECTIONS)}")
    return ObjectSpec(shape=shape, colour=colour, direction=_PHRASE_DIRECTIONS[rest], speed=speed, size=size)


_BACKGROUND_RE = re.compile(r"^(?P<objects>.*?) on a (?P<background>\S+) background$")
_SPLIT_RE = re.compile(r" and (?=an? )")


def parse_caption(text: str) -> SceneSpec:
    """Parse a canonical caption back into its scene; `ValueError` names the part that does not parse."""
    norm = " ".join(text.strip().split())
    background = DEFAULT_BACKGROUND
    match = _BACKGROUND_RE.match(norm)
    if match:
        background = match["background"]
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown background {background!r} in {text!r}; expected one of {list(BACKGROUNDS)}")
        norm = match["objects"]
    if not norm:
        raise ValueError(f"no object in caption {text!r}")
    objects = [_parse_object(part) for part in _SPLIT_RE.split(norm)]
    return SceneSpec(objects=objects, background=background)


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun(obj: ObjectSpec, rng: np.random.Generator, *, colour_word: str | None = None) -> str:
    size = _pick(rng, _SIZE_SYNONYMS[obj.size])
    colour = colour_word or _pick(rng, COLOUR_SYNONYMS[obj.colour])
    return " ".join(w for w in (size, colour, _pick(rng, _SHAPE_SYNONYMS[obj.shape])) if w)


def _motion(obj: ObjectSpec, rng: np.random.Generator) -> str:
    if obj.direction == "still":
        return _pick(rng, _STILL_WORDS)
    speed = _pick(rng, _SPEED_WORDS[obj.speed])
    verb = "zooming" if speed == "zooming" else _pick(rng, _MOVING_VERBS)
    speed = "" if speed == "zooming" else speed
    direction = _pick(rng, _DIRECTION_WORDS[obj.direction])
    return " ".join(w for w in (verb, speed, direction) if w)


def _object_paraphrase(obj: ObjectSpec, rng: np.random.Generator) -> str:
    form = int(rng.integers(5))
    noun = _noun(obj, rng)
    if form == 0:  # "crimson ball sliding right"
        return f"{noun} {_motion(obj, rng)}"
    if form == 1:  # "a crimson ball, sliding right"
        return f"{_article(noun)} {noun}, {_motion(obj, rng)}"
    if form == 2:  # shorthand "red dot →"
        arrow = "(still)" if obj.direction == "still" else _ARROWS[obj.direction]
        fast = {"slow": " slow", "fast": " fast"}.get(obj.speed, "") if obj.direction != "still" else ""
        return f"{noun} {arrow}{fast}"
    if form == 3:  # "sliding right: a red ball"
        return f"{_motion(obj, rng)}: {_article(noun)} {noun}"
    shape_word = _pick(rng, _SHAPE_SYNONYMS[obj.shape])  # "a ball that is red, drifting up"
    size = _pick(rng, _SIZE_SYNONYMS[obj.size])
    size = f"{size} " if size else ""
    colour = _pick(rng, COLOUR_SYNONYMS[obj.colour])
    return f"{_article(size or shape_word)} {size}{shape_word} that is {colour}, {_motion(obj, rng)}"


def _typo(text: str, rng: np.random.Generator) -> str:
    colour_words = {w for words in COLOUR_SYNONYMS.values() for w in words}
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha() and w.lower() not in colour_words]
    if not candidates:
        return text
    i = int(rng.choice(candidates))
    w = words[i]
    j = int(rng.integers(len(w) - 1))
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def paraphrase(spec: SceneSpec, rng: np.random.Generator) -> str:
    """A free-form user-style prompt for `spec` (see the module doc); never equal to `caption(spec)`."""
    canonical = caption(spec)
    for _ in range(8):
        parts = [_object_paraphrase(o, rng) for o in spec.objects]
        text = _pick(rng, _JOINERS).join(parts)
        if spec.background != DEFAULT_BACKGROUND or rng.random() < 0.2:
            text += " " + _pick(rng, _BACKGROUND_WORDS[spec.background])
        if rng.random() < 0.3:
            text = text.replace("a ", "", 1) if text.startswith("a ") else text
        if rng.random() < 0.15:
            text = _typo(text, rng)
        case = rng.random()
        if case < 0.1:
            text = text.capitalize()
        elif case < 0.13:
            text = text.upper()
        if text != canonical:
            return text
    return canonical + " →"  # unreachable in practice: eight draws all equal to the canonical caption


def noisy_caption_kind(rng: np.random.Generator) -> str:
    """Draw a kind of noisy caption from `NOISY_CAPTION_MIX`."""
    kinds = list(NOISY_CAPTION_MIX)
    return kinds[int(rng.choice(len(kinds), p=list(NOISY_CAPTION_MIX.values())))]


def noisy_caption(spec: SceneSpec, rng: np.random.Generator, kind: str | None = None) -> str:
    """A web-like caption for `spec`: right, rephrased, wrong, vague, partial or empty (see `NOISY_CAPTION_MIX`).

    `kind` forces one kind; by default it is drawn from the mix."""
    if kind is None:
        kind = noisy_caption_kind(rng)
    if kind == "canonical":
        return caption(spec)
    if kind == "paraphrase":
        return paraphrase(spec, rng)
    if kind == "wrong":
        return caption(mutate(spec, rng, kind=_pick(rng, ("colour", "shape", "direction"))))
    if kind == "vague":
        obj = spec.objects[int(rng.integers(len(spec.objects)))]
        direction = "around" if obj.direction == "still" else _DIRECTION_WORDS[obj.direction][0]
        return _pick(rng, _VAGUE).format(colour=obj.colour, shape=obj.shape, direction=direction)
    if kind == "partial":
        if len(spec.objects) > 1 and rng.random() < 0.5:
            return _object_caption(spec.objects[int(rng.integers(len(spec.objects)))])
        obj = spec.objects[int(rng.integers(len(spec.objects)))]
        noun = " ".join(([obj.size] if obj.size != DEFAULT_SIZE else []) + [obj.colour, obj.shape])
        return f"{_article(noun)} {noun}"
    if kind == "empty":
        return ""
    raise ValueError(f"unknown noisy caption kind {kind!r}; expected one of {list(NOISY_CAPTION_MIX)}")


assert set(_DIRECTION_PHRASES) | {"still"} == set(DIRECTIONS)
assert set(_DIRECTION_WORDS) | {"still"} == set(DIRECTIONS)
assert set(COLOUR_SYNONYMS) == set(COLOURS) and set(_SHAPE_SYNONYMS) == set(SHAPES)
assert set(_BACKGROUND_WORDS) == set(BACKGROUNDS) and set(_SIZE_SYNONYMS) == set(SIZES)
