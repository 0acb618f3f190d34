"""Message catalogs: one JSON file per language in ``rag/locales/`` (``en.json``, ``zh-CN.json``); a third language
is one more file, no code change.

Keys are dotted names (``answer.abstain.intro``, ``ui.chat.send``); values are ``str.format`` templates over named
parameters. ``meta.*`` keys describe the language itself: its name in the switch (``meta.name``), its name in the
generator's instruction (``meta.prompt_name``) and the scripts its text is written in (``meta.scripts``, space
separated ISO 15924 codes, used to guess a question's language). The UI (``ui.i18n``) and the pipeline read the
same catalogs; the CLI and the logs stay English.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from rag.errors import ParamValue
from rag.text import dominant_script

LOCALES_DIR = Path(__file__).with_name("locales")
DEFAULT_LANG = "en"


@lru_cache(maxsize=1)
def catalogs() -> dict[str, dict[str, str]]:
    """Every catalog by language tag (the file's stem), read once."""
    out: dict[str, dict[str, str]] = {}
    for f in sorted(LOCALES_DIR.glob("*.json")):
        data = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError(f"{f}: a catalog is one JSON object of string keys to string values")
        out[f.stem] = data
    if DEFAULT_LANG not in out:
        raise ValueError(f"{LOCALES_DIR}: the default catalog {DEFAULT_LANG}.json is missing")
    return out


def languages() -> list[str]:
    """Language tags with a catalog, the default first."""
    return [DEFAULT_LANG] + sorted(k for k in catalogs() if k != DEFAULT_LANG)


def resolve(lang: str | None) -> str:
    """The catalog for ``lang`` (a BCP 47 tag): exact, else the same primary language (``zh`` → ``zh-CN``,
    ``en-GB`` → ``en``), else the default."""
    if not lang:
        return DEFAULT_LANG
    have = catalogs()
    if lang in have:
        return lang
    low = lang.replace("_", "-").lower()
    for tag in have:
        if tag.lower() == low:
            return tag
    primary = low.split("-")[0]
    return next((tag for tag in languages() if tag.lower().split("-")[0] == primary), DEFAULT_LANG)


def negotiate(accept_language: str | None) -> str:
    """The best catalog for an HTTP ``Accept-Language`` header (quality values honoured), else the default."""
    prefs: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, rest = part.strip().partition(";")
        q = 1.0
        m = re.search(r"q=([0-9.]+)", rest)
        if m:
            try:
                q = float(m.group(1))
            except ValueError:
                q = 0.0
        if tag and tag != "*" and q > 0:
            prefs.append((-q, i, tag))
    for _, _, tag in sorted(prefs):
        found = resolve(tag)
        if found != DEFAULT_LANG or tag.lower().split("-")[0] == DEFAULT_LANG.split("-")[0]:
            return found
    return DEFAULT_LANG


def t(key: str, lang: str | None = None, /, **params: ParamValue) -> str:
    """The text of ``key`` in ``lang`` (falling back to the default catalog), formatted with ``params``."""
    cat = catalogs()
    template = cat[resolve(lang)].get(key)
    if template is None:
        template = cat[DEFAULT_LANG][key]  # KeyError: a key no catalog has is a bug, not a user error
    return template.format(**params) if params else template


def detect_lang(text: str) -> str | None:
    """The catalog whose ``meta.scripts`` claims the dominant script of ``text``; None when it has no letters or no
    catalog claims its script (the caller then uses the UI language)."""
    script = dominant_script(text or "")
    if script is None:
        return None
    return next((tag for tag in languages() if script in catalogs()[tag].get("meta.scripts", "").split()), None)


def answer_lang(question: str, ui_lang: str | None) -> str:
    """The language an answer is written in: the question's, else (no text, or none we can tell) the UI's."""
    return detect_lang(question) or resolve(ui_lang)


def error_text(code: str, params: Mapping[str, ParamValue], lang: str | None, fallback: str) -> str:
    """A user error shown in ``lang``: the catalog's ``error.<code>`` template with the error's params, else
    ``fallback`` (the English message the error was raised with, also used for English itself: it is the most
    precise wording, the English catalog entry documents the code)."""
    key = f"error.{code}"
    if resolve(lang) == DEFAULT_LANG:
        return fallback
    template = catalogs()[resolve(lang)].get(key)
    if template is None:
        return fallback
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError):  # a template naming a param this raise did not give: English
        return fallback
