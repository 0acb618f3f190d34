"""The answer as the user reads it while it streams: inert Markdown, re-rendered at a bounded rate.

Neutral ground between the pipeline (which yields tokens) and whoever shows them: the chat tab renders with it, and
the pipeline benchmark times exactly what the chat does per token. Model output can echo case text from imports and
admins, so nothing rendered here can become HTML, a link or an image.
"""

from __future__ import annotations

import html
import re
import time

#: C0 control characters (except tab/newline/CR) and DEL: never shown.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_AUTOLINK = re.compile(r"(?i)[a-z][a-z0-9+.-]*://|\bwww\.")
#: One character of a ``scheme://`` match, and its first one (the same classes and flags as ``_AUTOLINK``: with
#: IGNORECASE, ``[a-z]`` also matches e.g. the Kelvin sign).
_SCHEME_CHAR = re.compile(r"(?i)[a-z0-9+.-]")
_LETTER = re.compile(r"(?i)[a-z]")


def inert_md(text: str) -> str:
    """Markdown that cannot produce HTML tags, links or images: ``<``/``>``/``&`` escaped, ``[`` ``]`` as entities.

    Citations like ``[case-id]`` still read the same; ``![x](url)`` and ``[x](javascript:…)`` become plain text.
    """
    return _defuse(CONTROL_CHARS.sub("", text or ""))


def _defuse(text: str) -> str:
    """:func:`inert_md` of a text without control characters."""
    t = html.escape(text, quote=False)
    t = t.replace("[", "&#91;").replace("]", "&#93;")
    # Bare URLs, www. names and e-mail addresses would be auto-linked by the chat's Markdown (GFM): entities keep
    # the text identical on screen but unlinkable.
    t = _AUTOLINK.sub(lambda m: m.group(0).replace(":", "&#58;").replace(".", "&#46;"), t)
    return t.replace("@", "&#64;")


def stable_prefix(text: str) -> int:
    """How much of ``text`` (control characters already removed) :func:`inert_md` renders the same whatever follows.

    The auto-link rewrite looks ahead: ``abc.d:/`` is shown as written, but once the next ``/`` arrives the whole
    ``abc.d://`` is rewritten (``&#46;``, ``&#58;``), so a render of the shorter text is not a prefix of the longer
    one. A ``scheme://`` match starts at the first letter of the run of scheme characters before ``://``; from the
    first ``.`` or ``:`` after that letter, the text's end could still change when more comes. ``www.`` needs no
    look-ahead, and every other rewrite (escapes, ``[``/``]``, ``@``) is one character at a time.
    """
    # the run of scheme characters at the end (before a ":" or ":/" already written), scanned backwards: O(run)
    start = len(text) - (2 if text.endswith(":/") else 1 if text.endswith(":") else 0)
    while start > 0 and _SCHEME_CHAR.match(text, start - 1):
        start -= 1
    letter = next((i for i in range(start, len(text)) if _LETTER.match(text, i)), None)
    if letter is None:
        return len(text)
    changeable = [i for i in (text.find(".", letter), text.find(":", letter)) if i >= 0]
    return min(changeable, default=len(text))


class StreamRenderer:
    """The growing answer as inert Markdown, re-rendered at most every ``interval`` seconds.

    Rendering is O(answer length), so doing it for every token is quadratic in the answer and sends a websocket
    update per token; 20 updates a second look the same to a reader.

    What the reader sees only grows: each render is a prefix of every later one and of ``inert_md`` of the whole
    answer. The end of the text that a later chunk could still turn into a rewritten link (``abc:/`` before the
    second ``/``) is held back, as stop strings are, and shown once it is settled (see :func:`stable_prefix`).
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.parts: list[str] = []
        self._last = 0.0

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def feed(self, chunk: str) -> str | None:
        """Add a chunk; returns the rendered answer when an update is due, else None."""
        self.parts.append(chunk)
        now = time.monotonic()
        if now - self._last < self.interval:
            return None
        self._last = now
        text = CONTROL_CHARS.sub("", self.text)
        return _defuse(text[: stable_prefix(text)])
