"""Clean-up and validation of a rewrite; a rewrite that fails falls back to the user's own prompt.

`clean(raw)` removes what chat models wrap answers in (a "Prompt:" label, quotation marks around the whole answer,
line breaks) and `check(original, text, finished, max_words)` returns why a rewrite is unusable, or None:

- `empty`: nothing left after clean-up;
- `truncated`: generation hit `max_new_tokens` without an end-of-turn token, so the text stops mid-sentence;
- `wrong_language`: the dominant script of the rewrite differs from the prompt's — a simple script count (Latin,
  CJK, Cyrillic, ...) over letters, so an English prompt answered mostly in Chinese is caught, an English one
  answered in French is not;
- `overlong`: more than `max_words` words (whitespace-separated; CJK characters count one word each);
- `quoted_text_lost`: a span the user put in double quotes ("...", “...”, «...») is not in the rewrite verbatim.

The checks run in that order; the first that fails is the reason reported.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

FALLBACK_REASONS = ("empty", "truncated", "wrong_language", "overlong", "quoted_text_lost")

_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:here(?:'s| is) (?:the |a |an |your )?)?"
    r"(?:(?:enhanced|rewritten|detailed|improved|video|final)\s+)*(?:prompt|description)(?:\*\*)?\s*:\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)
_QUOTED = re.compile(r'"([^"\n]+)"|“([^”\n]+)”|«([^»\n]+)»')
_WRAPS = [('"', '"'), ("“", "”"), ("'", "'"), ("«", "»")]
_CJK_SCRIPTS = {"CJK", "HIRAGANA", "KATAKANA", "HANGUL"}


def clean(raw: str) -> str:
    """The rewrite as one paragraph, without a leading label or quotation marks around all of it."""
    text = " ".join(raw.split())
    text = _LABEL.sub("", text, count=1).strip()
    for left, right in _WRAPS:
        inner = text[len(left) : -len(right)]
        if len(text) > 2 and text.startswith(left) and text.endswith(right) and left not in inner:
            text = inner.strip()
    return text


def script_of(ch: str) -> str | None:
    """The script of a letter as the first word of its Unicode name ("LATIN", "CYRILLIC", "CJK", ...), else None."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    if not name:
        return None
    word = name.split()[0]
    return "CJK" if word in _CJK_SCRIPTS else word


def script_profile(text: str) -> Counter:
    return Counter(s for s in map(script_of, text) if s is not None)


def dominant_script(text: str) -> str | None:
    profile = script_profile(text)
    return profile.most_common(1)[0][0] if profile else None


def wrong_language(original: str, text: str, min_share: float = 0.5) -> bool:
    """True when less than `min_share` of the rewrite's letters are in the original's dominant script."""
    script = dominant_script(original)
    if script is None:  # a prompt with no letters ("→", "123") says nothing about the language
        return False
    profile = script_profile(text)
    total = sum(profile.values())
    return total > 0 and profile[script] / total < min_share


def count_words(text: str) -> int:
    cjk = sum(1 for ch in text if script_of(ch) == "CJK")
    return len(text.split()) + cjk


def quoted_spans(text: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(text)]


def check(original: str, text: str, *, finished: bool, max_words: int) -> str | None:
    """Why `text` cannot replace `original` (one of FALLBACK_REASONS), or None when it can."""
    if not text.strip():
        return "empty"
    if not finished:
        return "truncated"
    if wrong_language(original, text):
        return "wrong_language"
    if count_words(text) > max_words:
        return "overlong"
    if any(span not in text for span in quoted_spans(original)):
        return "quoted_text_lost"
    return None
