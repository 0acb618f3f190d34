"""Media-path resolution: the one place that turns a stored relative media path into a file the app may open.

Payloads store media paths relative to the media root; a payload is data (it may come from an imported archive or
an old store), so every path is checked here before the pipeline, the reranker, the generator or the UI opens it.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def _real_root(media_root: str) -> str:
    return os.path.realpath(media_root)


class MediaResolver:
    """Resolves media paths below one media root, refusing anything outside it (``..``, absolute paths, NUL bytes,
    symbolic links that lead out). ``root=None`` resolves nothing (a store without media)."""

    def __init__(self, root: Path | str | None) -> None:
        self.root: Path | None = Path(root) if root is not None else None

    def resolve(self, rel: str | None) -> str | None:
        """Absolute path of a media file, or None when there is none or it lies outside the media root.

        Runs for every candidate of every query, so it checks the path lexically and only follows symbolic links
        when one is actually on the way below the root (a full ``realpath`` costs a ``stat`` per path component).
        """
        if not rel or self.root is None:
            return None
        if "\x00" in rel:
            logger.warning("ignoring a media path with a NUL byte: %r", rel)
            return None
        root = _real_root(os.fspath(self.root))
        path = os.path.normpath(os.path.join(root, rel))  # an absolute ``rel`` replaces the root and is refused below
        inside = root.rstrip(os.sep) + os.sep
        if path.startswith(inside):
            cur = root
            for part in path[len(inside):].split(os.sep):
                cur = os.path.join(cur, part)
                if os.path.islink(cur):  # a link could lead anywhere: judge where it really goes
                    path = os.path.realpath(path)
                    break
            if path.startswith(inside):
                return path
        logger.warning("ignoring media path outside the media root: %s", rel)
        return None


def resolve_media(media_root: Path | str | None, rel: str | None) -> str | None:
    """:meth:`MediaResolver.resolve` for a one-off lookup (the UI's case view)."""
    return MediaResolver(media_root).resolve(rel)
