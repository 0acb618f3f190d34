"""Text helpers shared by every layer: Unicode normalisation for search/dedup keys and the script-based guess of a
text's language (the answer is written in the question's language)."""

from __future__ import annotations

import re
import unicodedata

#: Script of a letter, by code-point range. Han covers CJK ideographs (URO, extension A, compatibility); kana and
#: Hangul are separate scripts so a Japanese or Korean catalog can claim them.
_SCRIPTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Hani", re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")),
    ("Kana", re.compile("[\u3040-\u30ff\u31f0-\u31ff]")),
    ("Hang", re.compile("[\uac00-\ud7af\u1100-\u11ff]")),
    ("Cyrl", re.compile("[\u0400-\u04ff]")),
    ("Latn", re.compile("[A-Za-z\u00c0-\u024f]{2,}")),  # a Latin *word*: "E13" or a unit letter is not a language
)


def fold(text: str) -> str:
    """The normalised form used wherever the product compares text (search, duplicate keys): NFKC (full-width
    letters, digits and punctuation become their ordinary forms, ``Ｅ１３`` → ``E13``), then case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def dominant_script(text: str) -> str | None:
    """The script with the most weight in ``text``: each ideograph/kana/Hangul character and each Latin or Cyrillic
    word counts one (a Chinese word is one or two characters). None when the text has no letters at all."""
    counts = {name: len(rx.findall(text)) for name, rx in _SCRIPTS}
    if counts["Kana"]:  # Japanese mixes kanji with kana: any kana decides
        counts["Kana"] += counts.pop("Hani")
    name, n = max(counts.items(), key=lambda kv: kv[1])
    return name if n else None
