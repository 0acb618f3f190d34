"""Maintenance: consistency check and repair, blue-green re-embedding, zip backup, near-duplicate review.

The part of :class:`~knowledge_base.kb.KnowledgeBase` that operators run (``ragvqa kb check/reindex/export``). It
works on the shared :class:`~knowledge_base.state.KBState`; ``reindex`` swaps the state's store and embedder, so the
cases part writes with the new ones afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pydantic import ValidationError

from knowledge_base.archive import BACKUP_FORMAT
from knowledge_base.dedup import NEAR_DUP_KINDS, Duplicate
from knowledge_base.ingest import case_content_hash, embed_item, media_payload, text_payload
from knowledge_base.schema import Case, MediaItem
from knowledge_base.state import EmbedderLike, KBState, now
from rag.fileio import atomic_writer
from rag.store import StoreMeta, VectorPoint, point_id

__all__ = ["CheckReport", "Maintenance", "ReindexResult"]

log = logging.getLogger(__name__)


@dataclass
class ReindexResult:
    cases: int
    points: int
    skipped_media: list[str]
    embedder_id: str
    dim: int
    elapsed_s: float
    #: int8 scalar quantization of the new store (``RAGVQA_STORE_QUANTIZATION`` unless overridden).
    quantization: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "points": self.points, "skipped_media": self.skipped_media,
                "embedder_id": self.embedder_id, "dim": self.dim, "quantization": self.quantization,
                "elapsed_s": round(self.elapsed_s, 3)}


@dataclass
class CheckReport:
    """Consistency problems between records, points and files; ``fixed`` counts repairs when run with fix=True."""

    cases: int = 0
    points: int = 0
    media_files: int = 0
    #: Media points whose case has no text point (interrupted import or delete).
    orphan_points: list[str] = field(default_factory=list)
    #: Media points of an existing case that its record no longer lists (interrupted update).
    stale_points: list[str] = field(default_factory=list)
    #: (case id, media id) listed by a case but without a point.
    missing_points: list[tuple[str, str]] = field(default_factory=list)
    #: (case id, media id, path) whose file is gone from the media store.
    missing_files: list[tuple[str, str, str]] = field(default_factory=list)
    #: Media files no case references.
    unreferenced_files: list[str] = field(default_factory=list)
    #: Points written by another embedder than the store's (their vectors are not comparable).
    embedder_mismatch: list[str] = field(default_factory=list)
    #: Media points whose payload disagrees with their case record (filters would be wrong).
    payload_mismatch: list[str] = field(default_factory=list)
    #: Text points whose case record does not parse.
    invalid_cases: list[str] = field(default_factory=list)
    #: Leftover temp files of interrupted writes.
    temp_files: int = 0
    #: Store built for another embedder/dimension than the one configured (needs ``kb reindex``).
    meta_problem: str | None = None
    fixed: dict[str, int] = field(default_factory=dict)

    @property
    def problems(self) -> int:
        return (len(self.orphan_points) + len(self.stale_points) + len(self.missing_points) + len(self.missing_files)
                + len(self.unreferenced_files) + len(self.embedder_mismatch) + len(self.payload_mismatch)
                + len(self.invalid_cases) + self.temp_files + (1 if self.meta_problem else 0))

    def counts(self) -> dict[str, int]:
        return {
            "orphan_points": len(self.orphan_points), "stale_points": len(self.stale_points),
            "missing_points": len(self.missing_points), "missing_files": len(self.missing_files),
            "unreferenced_files": len(self.unreferenced_files), "embedder_mismatch": len(self.embedder_mismatch),
            "payload_mismatch": len(self.payload_mismatch), "invalid_cases": len(self.invalid_cases),
            "temp_files": self.temp_files, "meta_problem": 1 if self.meta_problem else 0,
        }

    def summary(self) -> str:
        bad = {k: v for k, v in self.counts().items() if v}
        head = f"{self.cases} cases, {self.points} points, {self.media_files} media files: "
        body = "no problems" if not bad else ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in bad.items())
        tail = f" (fixed: {', '.join(f'{v} {k}' for k, v in self.fixed.items())})" if self.fixed else ""
        return head + body + tail + (f"; {self.meta_problem}" if self.meta_problem else "")

    def to_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "points": self.points, "media_files": self.media_files, "problems": self.problems,
                **self.counts(), "meta_problem_text": self.meta_problem, "fixed": self.fixed,
                "details": {"orphan_points": self.orphan_points, "stale_points": self.stale_points,
                            "missing_points": [list(x) for x in self.missing_points],
                            "missing_files": [list(x) for x in self.missing_files],
                            "unreferenced_files": self.unreferenced_files, "invalid_cases": self.invalid_cases}}


class Maintenance:
    """Check/fix, reindex, export and near-duplicate review over the shared :class:`~knowledge_base.state.KBState`."""

    def __init__(self, state: KBState) -> None:
        self.s = state

    def near_duplicates(self, threshold: float | None = None, *, limit: int = 1000) -> list[Duplicate]:
        """Pairs of images/PDF pages of different cases with cosine ≥ ``threshold`` (default: the import's), for an
        editor to review; each pair once, best first."""
        thr = threshold if threshold is not None else (self.s.options.near_dup_threshold or 0.95)
        pairs: dict[tuple[str, str], Duplicate] = {}
        for p in self.s.store.scroll(filters={"kind": list(NEAR_DUP_KINDS)}, with_vectors=True, batch_size=256,
                                   payload_keys=["case_id", "media_id", "source_file", "caption"]):
            if p.vector is None:
                continue
            cid, mid = str(p.payload.get("case_id")), str(p.payload.get("media_id"))
            for h in self.s.store.search(p.vector, limit=8, filters={"kind": list(NEAR_DUP_KINDS)}):
                if h.score < thr:
                    break
                ocid, omid = str(h.payload.get("case_id") or ""), str(h.payload.get("media_id"))
                if not ocid or ocid == cid:
                    continue
                a, b = sorted([f"{cid}/{mid}", f"{ocid}/{omid}"])
                key = (a, b)
                if key not in pairs:
                    pairs[key] = Duplicate("near" if h.score < 0.99999 else "exact", cid, mid, ocid, omid, float(h.score))
        return sorted(pairs.values(), key=lambda d: -d.score)[:limit]

    # -- backup -------------------------------------------------------------------------------------------------
    def export(self, path: str | os.PathLike[str]) -> Path:
        """A zip backup: ``manifest.json`` + ``cases.jsonl`` (full case records) + ``media/<path>`` files.

        Import it with :meth:`import_path` (into this KB it is a no-op; into another, a restore). Written to a
        temp file and renamed, so a crash never leaves a truncated backup under the final name.
        """
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        cases, hashes = [], {}
        for p in self.s.text_payloads(keys=["case", "content_hash"]):
            try:
                c = Case.model_validate(p.payload["case"])
            except (ValidationError, KeyError):
                log.warning("export: skipping unreadable case record %s", p.id)
                continue
            cases.append(c)
            hashes[c.id] = p.payload.get("content_hash")
        cases.sort(key=lambda c: c.id)
        paths = sorted({m.path for c in cases for m in c.media})
        manifest = {"format": BACKUP_FORMAT, "version": 1, "exported_at": now().isoformat(), "cases": len(cases),
                    "media_files": len(paths), "store": self.s.store.meta.model_dump(mode="json"),
                    "content_hashes": hashes}
        with atomic_writer(dest) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=2))
            zf.writestr("cases.jsonl", "".join(c.model_dump_json() + "\n" for c in cases))
            for rel in paths:
                src = self.s.media.path(rel)
                if not src.is_file():
                    log.warning("export: media file %s is missing; run `ragvqa kb check`", rel)
                    continue
                zf.write(src, f"media/{rel}", compress_type=zipfile.ZIP_STORED)
        log.info("exported %d cases and %d media files to %s", len(cases), len(paths), dest)
        return dest

    # -- consistency --------------------------------------------------------------------------------------------
    def check(self, fix: bool = False) -> CheckReport:
        """Find (and with ``fix``, repair) inconsistencies between case records, points and files.

        Repair assumes no import is running elsewhere (with a Qdrant server, other processes could be mid-write:
        their fresh files would look unreferenced)."""
        with self.s.lock:
            report, state = self._scan()
            if fix and report.problems:
                self._repair(report, state)
                self.s.store.flush()
            return report

    def _scan(self) -> tuple[CheckReport, dict[str, Any]]:
        r = CheckReport()
        eid = self.s.store.meta.embedder_id
        if eid != self.s.embedder_id or self.s.store.dim != self.s.embed_dim:
            r.meta_problem = (f"store built for {eid!r} (dim {self.s.store.dim}) but the configured embedder is "
                              f"{self.s.embedder_id!r} (dim {self.s.embed_dim}); run `ragvqa kb reindex`")
        cases, media_pts = self._read_points(r, eid)
        r.cases = len(cases)
        self._check_media_points(r, cases, media_pts, eid)
        referenced = self._check_media_files(r, cases, media_pts)
        files = list(self.s.media.iter_files())
        r.media_files = len(files)
        r.unreferenced_files = [f for f in files if f not in referenced]
        tmp = self.s.media.root / ".tmp"
        r.temp_files = sum(1 for _ in tmp.iterdir()) if tmp.is_dir() else 0
        return r, {"cases": cases}

    def _read_points(self, r: CheckReport, eid: str) -> tuple[dict[str, Case], dict[str, dict[str, dict[str, Any]]]]:
        """One pass over the store: the valid cases by id, and each case's media points by point id."""
        cases: dict[str, Case] = {}
        media_pts: dict[str, dict[str, dict[str, Any]]] = {}
        for p in self.s.store.scroll(batch_size=256):
            r.points += 1
            pl = p.payload
            cid = str(pl.get("case_id"))
            if pl.get("embedder") != eid:
                r.embedder_mismatch.append(p.id)
            if pl.get("kind") == "text":
                try:
                    cases[cid] = Case.model_validate(pl["case"])
                except (ValidationError, KeyError):
                    r.invalid_cases.append(cid)
            else:
                media_pts.setdefault(cid, {})[p.id] = pl
        return cases, media_pts

    @staticmethod
    def _check_media_points(r: CheckReport, cases: dict[str, Case], media_pts: dict[str, dict[str, dict[str, Any]]],
                            eid: str) -> None:
        """Media points without a case (orphans), without a media item (stale), or with a payload that drifted."""
        for cid, pts in media_pts.items():
            case = cases.get(cid)
            if case is None:
                if cid not in r.invalid_cases:
                    r.orphan_points += list(pts)
                continue
            items = {point_id(cid, m.id): m for m in case.media}
            for pid, pl in pts.items():
                item = items.get(pid)
                if item is None:
                    r.stale_points.append(pid)
                elif any(pl.get(k) != v for k, v in media_payload(case, item, eid).items() if k != "embedder"):
                    r.payload_mismatch.append(pid)

    def _check_media_files(self, r: CheckReport, cases: dict[str, Case],
                           media_pts: dict[str, dict[str, dict[str, Any]]]) -> set[str]:
        """Media items whose file is gone or whose point is missing; returns the files the cases reference."""
        referenced: set[str] = set()
        for cid, case in cases.items():
            pts = media_pts.get(cid, {})
            for m in case.media:
                referenced.add(m.path)
                if not self.s.media.exists(m.path):
                    r.missing_files.append((cid, m.id, m.path))
                elif point_id(cid, m.id) not in pts:
                    r.missing_points.append((cid, m.id))
        return referenced

    def _repair(self, r: CheckReport, state: dict[str, Any]) -> None:
        cases: dict[str, Case] = state["cases"]
        fixed: Counter[str] = Counter()
        dead = r.orphan_points + r.stale_points
        if dead:
            self.s.store.delete_points(dead)
            fixed["points_deleted"] += len(dead)
        # Cases to rewrite: drop media whose file is gone, re-embed missing/foreign points, rewrite payloads.
        rewrite: dict[str, set[str]] = {}
        if r.meta_problem:  # vectors from this embedder would not belong in this store: only deletions are safe
            log.warning("check --fix: %s; only deleting, no rewrites", r.meta_problem)
        for cid, mid, _ in ([] if r.meta_problem else r.missing_files):
            case = cases[cid]
            cases[cid] = case.model_copy(update={"media": [m for m in case.media if m.id != mid],
                                                 "version": case.version + 1, "updated_at": max(now(), case.created_at)})
            self.s.store.delete_points([point_id(cid, mid)])
            rewrite.setdefault(cid, set())
            fixed["missing_media_removed"] += 1
        for cid, mid in [] if r.meta_problem else r.missing_points:
            rewrite.setdefault(cid, set()).add(point_id(cid, mid))
        by_id = {point_id(cid, m.id): cid for cid, c in cases.items() for m in c.media}
        by_id.update({point_id(cid): cid for cid in cases})
        for pid in [] if r.meta_problem else r.embedder_mismatch + r.payload_mismatch:
            if pid in by_id:
                rewrite.setdefault(by_id[pid], set()).add(pid)
        foreign = set(r.embedder_mismatch)
        for cid, need in rewrite.items():
            self._rewrite_case(cases[cid], need | foreign)
            fixed["cases_rewritten"] += 1
        if r.unreferenced_files:
            index = self.s.media_index(refresh=True)
            for rel in r.unreferenced_files:
                sha = PurePosixPath(rel).stem
                if not index.referenced(sha):
                    self.s.media.delete(rel)
                    fixed["files_deleted"] += 1
        if r.temp_files:
            fixed["temp_files_deleted"] += self.s.clean_temp_files(0.0)
        r.fixed = dict(fixed)
        log.info("check: repaired %s", r.fixed)

    def _rewrite_case(self, case: Case, reembed: set[str]) -> None:
        """Rewrite all points of ``case`` in write order, reusing stored vectors except for ids in ``reembed``."""
        eid = self.s.embedder_id
        ids = [point_id(case.id, m.id) for m in case.media] + [point_id(case.id)]
        have = {p.id: p for p in self.s.store.retrieve(ids, with_vectors=True)}
        vectors: dict[str, np.ndarray] = {}
        jobs: list[tuple[str, dict[str, Any]]] = []
        for m in case.media:
            pid = point_id(case.id, m.id)
            p = have.get(pid)
            if p is not None and p.vector is not None and pid not in reembed and p.payload.get("embedder") == eid:
                vectors[pid] = p.vector
            else:
                jobs.append((pid, embed_item(self.s.media, m, f"{case.id}: {m.source_file or m.id}")))
        tp = have.get(point_id(case.id))
        if tp is not None and tp.vector is not None and point_id(case.id) not in reembed and tp.payload.get("embedder") == eid:
            vectors[point_id(case.id)] = tp.vector
        else:
            jobs.append((point_id(case.id), {"text": case.embedding_text()}))
        if jobs:
            vecs = self.s.embed([j[1] for j in jobs])
            vectors.update({pid: v for (pid, _), v in zip(jobs, vecs, strict=False)})
        content_hash = (tp.payload.get("content_hash") if tp is not None else None) or ""
        if not content_hash:
            content_hash = case_content_hash(case)
        self.s.store.upsert([VectorPoint(id=point_id(case.id, m.id), vector=vectors[point_id(case.id, m.id)],
                                       payload=media_payload(case, m, eid)) for m in case.media])
        self.s.store.upsert([VectorPoint(id=point_id(case.id), vector=vectors[point_id(case.id)],
                                       payload=text_payload(case, content_hash, eid))])

    # -- re-embedding ---------------------------------------------------------------------------------------------
    def reindex(self, new_embedder: EmbedderLike, *, dim: int | None = None, embedder_id: str | None = None,
                quantization: bool | None = None, chunk_cases: int | None = None,
                progress: bool = False) -> ReindexResult:
        """Blue-green rebuild with ``new_embedder``: every case is re-embedded into a new store; the switch is
        atomic and the old store keeps serving (and is kept) until then. On any error the new store is dropped.

        The new store is built with the configured store settings, not the old store's: ``quantization`` defaults
        to ``settings.store_quantization`` (``RAGVQA_STORE_QUANTIZATION``), which is what the store's open-time
        warning promises a reindex applies; index options (HNSW m/ef_construct...) come from the settings the
        store was opened with."""
        t0 = time.perf_counter()
        eid = embedder_id or self.s.embedder_id_of(new_embedder, self.s.settings)
        new_dim = dim or int(new_embedder.dim)
        quant = bool(self.s.settings.store_quantization if quantization is None else quantization)
        meta = StoreMeta(embedder_id=eid, dim=new_dim, quantization=quant)
        n = chunk_cases or self.s.options.chunk_cases
        skipped: list[str] = []
        with self.s.lock:
            payloads = [p.payload for p in self.s.text_payloads(keys=["case", "content_hash"])]
            new = self.s.store.begin_reindex(meta)
            points = 0
            try:
                from tqdm import tqdm

                bar = tqdm(total=len(payloads), unit="case", desc="reindex", disable=not progress, leave=False)
                for start in range(0, len(payloads), n):
                    chunk: list[tuple[Case, str]] = []
                    for pl in payloads[start:start + n]:
                        try:
                            chunk.append((Case.model_validate(pl["case"]), pl.get("content_hash") or ""))
                        except (ValidationError, KeyError):
                            skipped.append(f"unreadable case record {pl.get('case_id')}")
                    jobs: list[tuple[Case, MediaItem | None, dict[str, Any]]] = []
                    for case, _ in chunk:
                        jobs.append((case, None, {"text": case.embedding_text()}))
                        for m in case.media:
                            if self.s.media.exists(m.path):
                                jobs.append((case, m, embed_item(self.s.media, m, f"{case.id}: {m.source_file or m.id}")))
                            else:
                                skipped.append(f"{case.id}: {m.path} (file missing)")
                    vecs = self.s.embed([j[2] for j in jobs], embedder=new_embedder, dim=new_dim)
                    media_points: list[VectorPoint] = []
                    text_points: list[VectorPoint] = []
                    hashes = {c.id: h for c, h in chunk}
                    for (case, item, _), v in zip(jobs, vecs, strict=True):
                        if item is None:
                            text_points.append(VectorPoint(id=point_id(case.id), vector=v,
                                                           payload=text_payload(case, hashes[case.id], eid)))
                        else:
                            media_points.append(VectorPoint(id=point_id(case.id, item.id), vector=v,
                                                            payload=media_payload(case, item, eid)))
                    new.upsert(media_points)
                    new.upsert(text_points)
                    points += len(media_points) + len(text_points)
                    bar.update(len(chunk))
                bar.close()
                new.flush()
                self.s.store.commit_reindex(new)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.s.store.abort_reindex(new)
                raise
            self.s.store = new
            self.s.embedder = new_embedder
            self.s.embedder_id = eid
            self.s.embed_dim = new_dim
            self.s.index = None
        res = ReindexResult(cases=len(payloads), points=points, skipped_media=skipped, embedder_id=eid, dim=new_dim,
                            elapsed_s=time.perf_counter() - t0, quantization=quant)
        log.info("reindexed %d cases (%d points) with %s (dim %d, quantization=%s)", res.cases, res.points, eid,
                 new_dim, quant)
        return res
