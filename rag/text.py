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


#: Byte-order marks that declare a text file's encoding (GB18030 encodes U+FEFF as these four bytes).
BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\x84\x31\x95\x33", "gb18030"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
#: Encodings a file may declare besides UTF-8; GBK and GB2312 are read as GB18030 (a superset of both).
DECLARABLE = {"utf-8": "utf-8", "utf8": "utf-8", "gb18030": "gb18030", "gbk": "gb18030", "gb2312": "gb18030",
              "utf-16": "utf-16"}


class TextDecodeError(ValueError):
    """Bytes that are not text in the encoding the file has or declares; the message names both."""


def declared_encoding(name: str) -> str | None:
    """An encoding declared in a file name, ``cases.gb18030.csv`` → ``gb18030`` (None when the name declares none)."""
    parts = name.lower().split(".")
    return DECLARABLE.get(parts[-2]) if len(parts) >= 3 else None


def decode_text(raw: bytes, declared: str | None = None) -> tuple[str, str]:
    """(text, encoding) of a text file's bytes: a byte-order mark decides (UTF-8, GB18030, UTF-16), else the
    ``declared`` encoding, else UTF-8. Nothing is guessed: GB18030 bytes read as UTF-8 fail with a message saying
    how to declare them, never as mojibake."""
    for bom, enc in BOMS:
        if raw.startswith(bom):
            body, encoding = raw[len(bom):], enc
            break
    else:
        body, encoding = raw, DECLARABLE.get((declared or "utf-8").lower().replace("_", "-"), "")
        if not encoding:
            raise TextDecodeError(f"unsupported encoding {declared!r} (use UTF-8, or declare GB18030)")
    try:
        return body.decode(encoding), encoding
    except UnicodeDecodeError as e:
        hint = "" if encoding != "utf-8" else ("; save it as UTF-8, or declare GB18030 with a byte-order mark or "
                                               "a name like cases.gb18030.csv")
        raise TextDecodeError(f"not {encoding} text (byte {e.start}){hint}") from None
