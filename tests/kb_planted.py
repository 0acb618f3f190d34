"""Planted knowledge bases for the KB-intelligence tests: vectors with known groups written through the real store
(Qdrant Edge), with valid payloads and case records, and the brute-force references the tests compare with.

The references here are written from the definitions (cosine similarity, best pair per case, similarity-weighted
majority vote), never by calling the code under test.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from knowledge_base.schema import Case, MediaItem
from rag.payload import MediaPointPayload, TextPointPayload
from rag.store import EdgeStore, StoreMeta, VectorPoint, VectorStore, open_store, point_id

EMBEDDER = "planted-embedder"


@dataclass
class Planted:
    """One planted case: its labels and its points' vectors (kind, vector); the first one must be its text."""

    id: str
    product_line: str
    equipment_model: str = ""
    tags: list[str] = field(default_factory=list)
    severity: str | None = None
    points: list[tuple[str, np.ndarray]] = field(default_factory=list)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _media(case_id: str, i: int, kind: str, page: int | None) -> MediaItem:
    sha = hashlib.sha256(f"{case_id}/{i}".encode()).hexdigest()
    ext = {"image": "png", "pdf_page": "png", "video": "mp4"}[kind]
    return MediaItem(kind=kind, sha256=sha, path=f"{sha[:2]}/{sha[2:4]}/{sha}.{ext}",
                     mime="video/mp4" if kind == "video" else "image/png", page=page,
                     thumbnail=f"{sha[:2]}/{sha[2:4]}/{sha}.thumb.jpg")


def planted_points(c: Planted, embedder: str = EMBEDDER) -> list[VectorPoint]:
    """The text point and media points ingestion would write for ``c`` (payloads valid under the contract)."""
    assert c.points and c.points[0][0] == "text"
    media, pages = [], 0
    for i, (kind, _) in enumerate(c.points[1:]):
        pages += kind == "pdf_page"
        media.append(_media(c.id, i, kind, pages if kind == "pdf_page" else None))
    case = Case(id=c.id, title=f"Title of {c.id}", product_line=c.product_line, equipment_model=c.equipment_model,
                symptom=f"Symptom of {c.id}.", tags=c.tags, severity=c.severity, media=media)  # type: ignore[arg-type]
    common = dict(case_id=c.id, product_line=c.product_line, equipment_model=c.equipment_model, tags=case.tags,
                  title=case.title)
    pts = [VectorPoint(id=point_id(c.id), vector=c.points[0][1], payload=TextPointPayload(
        **common, case=case.model_dump(mode="json"), document=case.embedding_text(), content_hash="sha256:0",
        embedder=embedder).model_dump(mode="json"))]
    for m, (_, vec) in zip(media, c.points[1:], strict=True):
        pts.append(VectorPoint(id=point_id(c.id, m.id), vector=vec, payload=MediaPointPayload(
            **common, media_id=m.id, kind=m.kind, media_path=m.path, thumbnail=m.thumbnail, caption="", page=m.page,
            sha256=m.sha256, embedder=embedder).model_dump(mode="json")))
    return pts


def open_planted(root: Path, cases: list[Planted], dim: int, embedder: str = EMBEDDER,
                 backend: str = "edge") -> VectorStore:
    """A real store holding ``cases``: Qdrant Edge (small and unoptimised: searches are exhaustive), or with
    ``backend="local"`` qdrant-client's local mode (the server code path without a server)."""
    if backend == "local":
        store: VectorStore = open_store(embedder_id=embedder, dim=dim, qdrant_location=":memory:")
    else:
        store = EdgeStore.open(root, StoreMeta(embedder_id=embedder, dim=dim))
    pts = [p for c in cases for p in planted_points(c, embedder)]
    if pts:
        store.upsert(pts)
    return store


def grouped_cases(rng: np.random.Generator, *, groups: int, per_group: int, dim: int, noise: float = 0.12,
                  media_kinds: tuple[str, ...] = ("image", "pdf_page", "video")) -> list[Planted]:
    """Cases in ``groups`` families: every point of a case is its family centre plus noise; media counts vary
    (0-3 per case) so cases with and without media are both present."""
    centres = [unit(rng.normal(size=dim)) for _ in range(groups)]
    out = []
    for g in range(groups):
        for j in range(per_group):
            n_media = int(rng.integers(0, 4)) if media_kinds else 0
            kinds = ["text", *(media_kinds[int(rng.integers(len(media_kinds)))] for _ in range(n_media))]
            pts = [(k, unit(centres[g] + noise * rng.normal(size=dim))) for k in kinds]
            out.append(Planted(id=f"g{g}-c{j:02d}", product_line=f"line{g}", equipment_model=f"model{g}",
                               tags=[f"fam{g}", "common"], severity=("low", "high")[g % 2], points=pts))
    return out


def brute_related(cases: list[Planted], case_id: str, limit: int) -> list[tuple[str, float]]:
    """Reference: other cases by best cosine over all (this point, that point) pairs, best first."""
    me = next(c for c in cases if c.id == case_id)
    a = np.stack([unit(v) for _, v in me.points])
    scored = []
    for c in cases:
        if c.id == case_id:
            continue
        b = np.stack([unit(v) for _, v in c.points])
        scored.append((c.id, float((a @ b.T).max())))
    scored.sort(key=lambda t: -t[1])
    return scored[:limit]


def photo_to_page_cases(dim: int, seed: int = 1) -> list[Planted]:
    """Case ``a``'s photo is (almost) case ``b``'s second manual page: their best reason is "photo 1 ↔ manual page 2"."""
    rng = np.random.default_rng(seed)
    v = unit(rng.normal(size=dim))
    a = Planted(id="a", product_line="x", points=[("text", unit(rng.normal(size=dim))), ("image", v)])
    b = Planted(id="b", product_line="x", points=[("text", unit(rng.normal(size=dim))),
                                                  ("pdf_page", unit(rng.normal(size=dim))),
                                                  ("pdf_page", unit(v + 0.01 * rng.normal(size=dim)))])
    return [a, b]
