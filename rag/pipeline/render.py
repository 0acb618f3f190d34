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


def inert_md(text: str) -> str:
    """Markdown that cannot produce HTML tags, links or images: ``<``/``>``/``&`` escaped, ``[`` ``]`` as entities.

    Citations like ``[case-id]`` still read the same; ``![x](url)`` and ``[x](javascript:…)`` become plain text.
    """
    t = html.escape(CONTROL_CHARS.sub("", text or ""), quote=False)
    t = t.replace("[", "&#91;").replace("]", "&#93;")
    # Bare URLs, www. names and e-mail addresses would be auto-linked by the chat's Markdown (GFM): entities keep
    # the text identical on screen but unlinkable.
    t = _AUTOLINK.sub(lambda m: m.group(0).replace(":", "&#58;").replace(".", "&#46;"), t)
    return t.replace("@", "&#64;")


class StreamRenderer:
    """The growing answer as inert Markdown, re-rendered at most every ``interval`` seconds.

    Rendering is O(answer length), so doing it for every token is quadratic in the answer and sends a websocket
    update per token; 20 updates a second look the same to a reader.
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
        return inert_md(self.text)
