"""Duplicate media across cases: exact (same sha256) and near duplicates (cosine ≥ threshold between images).

Why: the same photo attached to two cases makes both cases tie for every query that matches it and doubles the
index; a re-shot of the same scene (resized, re-encoded) is almost always the same fault documented twice. The
importer keeps the first copy, links the newcomer to its owner (``CaseLink(relation="near_duplicate")``) and
reports the pair, so an editor can merge or keep both knowingly.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rag.payload import PICTURE_KINDS, MediaKind
from rag.store import VectorStore

__all__ = ["Duplicate", "MediaIndex", "MediaRef", "NearDupFinder", "NEAR_DUP_KINDS"]

log = logging.getLogger(__name__)

#: Media kinds compared by cosine similarity (videos only by exact hash: their vectors blur many frames).
NEAR_DUP_KINDS: tuple[MediaKind, ...] = tuple(sorted(PICTURE_KINDS))


@dataclass(frozen=True)
class MediaRef:
    """A media point as the index knows it."""

    case_id: str
    media_id: str
    sha256: str
    kind: str
    embedder: str | None = None


@dataclass
class Duplicate:
    """One duplicate found during an import: ``media`` of ``case_id`` duplicates ``other_media_id`` of ``other_case_id``."""

    kind: Literal["exact", "near"]
    case_id: str
    media: str
    other_case_id: str
    other_media_id: str
    score: float

    def describe(self) -> str:
        what = "same file as" if self.kind == "exact" else f"near duplicate (cosine {self.score:.3f}) of"
        return f"{self.media}: {what} {self.other_media_id} of case {self.other_case_id}"

    def to_dict(self) -> dict[str, str | float]:
        return {"kind": self.kind, "case_id": self.case_id, "media": self.media, "other_case_id": self.other_case_id,
                "other_media_id": self.other_media_id, "score": round(self.score, 4)}


@dataclass
class MediaIndex:
    """Which case owns which media content: built from the store's media points, kept current by the writer."""

    by_sha: dict[str, list[MediaRef]] = field(default_factory=lambda: defaultdict(list))
    by_case: dict[str, dict[str, MediaRef]] = field(default_factory=lambda: defaultdict(dict))

    @classmethod
    def build(cls, store: VectorStore) -> MediaIndex:
        """One scroll reading a few payload fields. Media points of cases without a text point (left by an
        interrupted import) are not owners: that case does not exist yet."""
        idx = cls()
        keys = ["case_id", "media_id", "sha256", "kind", "embedder"]
        cases: set[str] = set()
        refs: list[MediaRef] = []
        for p in store.scroll(batch_size=1024, payload_keys=keys):
            pl = p.payload
            if pl.get("kind") == "text" and pl.get("case_id"):
                cases.add(pl["case_id"])
            elif pl.get("media_id") and pl.get("case_id") and pl.get("sha256"):
                refs.append(MediaRef(pl["case_id"], pl["media_id"], pl["sha256"], pl.get("kind", ""), pl.get("embedder")))
        for ref in refs:
            if ref.case_id in cases:
                idx.add(ref)
        return idx

    def add(self, ref: MediaRef) -> None:
        old = self.by_case[ref.case_id].get(ref.media_id)
        if old is not None:
            self._drop(old)
        self.by_case[ref.case_id][ref.media_id] = ref
        self.by_sha[ref.sha256].append(ref)

    def _drop(self, ref: MediaRef) -> None:
        refs = self.by_sha.get(ref.sha256, [])
        self.by_sha[ref.sha256] = [r for r in refs if not (r.case_id == ref.case_id and r.media_id == ref.media_id)]
        if not self.by_sha[ref.sha256]:
            del self.by_sha[ref.sha256]

    def remove(self, case_id: str, media_id: str) -> None:
        ref = self.by_case.get(case_id, {}).pop(media_id, None)
        if ref is not None:
            self._drop(ref)

    def remove_case(self, case_id: str) -> None:
        for ref in list(self.by_case.pop(case_id, {}).values()):
            self._drop(ref)

    def case_media(self, case_id: str) -> dict[str, MediaRef]:
        return dict(self.by_case.get(case_id, {}))

    def owner(self, sha256: str, exclude_case: str) -> MediaRef | None:
        """The first other case holding this exact content."""
        return next((r for r in self.by_sha.get(sha256, []) if r.case_id != exclude_case), None)

    def referenced(self, sha256: str, exclude_case: str | None = None) -> bool:
        """True if a case (other than ``exclude_case``) still has a point for this content."""
        return any(r.case_id != exclude_case for r in self.by_sha.get(sha256, []))


class NearDupFinder:
    """Near-duplicate images of *other* cases: the store (earlier imports) plus not-yet-written vectors of this run.

    Store hits count only for cases that exist (``index`` knows their media) and are not being rewritten in the
    current chunk (``exclude``); the chunk's own kept and accepted media are compared through ``add_pending``.
    This makes the outcome independent of where an earlier run was interrupted.
    """

    def __init__(self, store: VectorStore, threshold: float, index: MediaIndex, *, limit: int = 8,
                 exact: bool = False) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.store, self.threshold, self.index, self.limit, self.exact = store, threshold, index, limit, exact
        self.exclude: set[str] = set()
        self._pending: list[tuple[str, str, np.ndarray]] = []

    def find(self, vector: np.ndarray, case_id: str) -> tuple[str, str, float] | None:
        """(other case, other media id, cosine) of the best match ≥ threshold, else None."""
        best: tuple[str, str, float] | None = None
        hits = self.store.search(vector, limit=self.limit, filters={"kind": list(NEAR_DUP_KINDS)}, exact=self.exact)
        for h in hits:
            cid, mid = h.payload.get("case_id"), h.payload.get("media_id")
            if h.score < self.threshold:
                break
            if cid and mid and cid != case_id and cid not in self.exclude and mid in self.index.by_case.get(cid, {}):
                best = (cid, mid, float(h.score))
                break
        for cid, mid, vec in self._pending:
            if cid == case_id:
                continue
            score = float(np.dot(vec, vector))
            if score >= self.threshold and (best is None or score > best[2]):
                best = (cid, mid, score)
        return best

    def add_pending(self, case_id: str, media_id: str, vector: np.ndarray) -> None:
        """A vector accepted in this run but not yet in the store (same chunk)."""
        self._pending.append((case_id, media_id, np.asarray(vector, dtype=np.float32)))

    def clear_pending(self) -> None:
        """After a chunk is written its vectors are found through the store."""
        self._pending.clear()
