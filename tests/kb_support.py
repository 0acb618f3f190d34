"""Helpers shared by the knowledge-base tests: synthetic cases (PIL scenes), KB opening on both backends, and a
canonical view of a KB's whole state (records, points, vectors, files) for "same final state" comparisons."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from typer.testing import CliRunner, Result

from knowledge_base.ingest import IngestOptions
from knowledge_base.kb import KnowledgeBase
from rag.config import Settings
from rag.store import open_store

#: The tiny random model maps distinct synthetic scenes up to cosine ~0.96 and a JPEG re-encode above 0.99, so the
#: tests use a stricter near-duplicate threshold than the production default (0.95, meant for the real model).
NEAR_DUP = 0.985
OPTIONS = IngestOptions(near_dup_threshold=NEAR_DUP, chunk_cases=4, pdf_long_side=256, thumbnails=True)


def scene(seed: int, w: int = 128, h: int = 96) -> Image.Image:
    """A deterministic picture: a coloured background with a few rectangles (distinct per seed)."""
    r = np.random.RandomState(seed)
    im = Image.new("RGB", (w, h), tuple(int(x) for x in r.randint(0, 255, 3)))
    dr = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = r.randint(0, w - 20), r.randint(0, h - 20)
        dr.rectangle([x0, y0, x0 + r.randint(8, w // 2), y0 + r.randint(8, h // 2)],
                     fill=tuple(int(x) for x in r.randint(0, 255, 3)))
    return im


def variant(im: Image.Image, scale: float = 0.9, quality: int = 80) -> Image.Image:
    """The same scene as a customer would send it: resized and JPEG re-encoded."""
    small = im.resize((int(im.width * scale), int(im.height * scale)))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def jpeg_bytes(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def case_dict(i: int, media: list[Any] | None = None, **kw: Any) -> dict[str, Any]:
    lines = ["printer", "pump", "hvac"]
    d: dict[str, Any] = {
        "id": f"case-{i:02d}",
        "title": f"Fault number {i} on the unit",
        "product_line": lines[i % 3],
        "equipment_model": f"M{i % 2}",
        "symptom": f"The unit shows fault pattern {i} and stops after a few minutes of operation.",
        "cause": f"Component {i} wears out.",
        "solution": [f"Replace component {i}.", "Restart the unit."],
        "error_codes": [f"E{i:02d}"],
        "tags": ["synthetic", f"t{i % 2}"],
        "media": media if media is not None else [],
    }
    d.update(kw)
    return d


def add_scene_cases(kb: KnowledgeBase, n: int) -> None:
    """Add ``case-00`` … through the façade, each with one JPEG of its own scene (``scene(i)``)."""
    for i in range(n):
        kb.add_case(case_dict(i), media=[(f"{i}.jpg", jpeg_bytes(scene(i)))])


def write_jsonl(path: Path, cases: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")
    return path


def make_source(root: Path, n: int, *, seed0: int = 0) -> Path:
    """A JSONL source of ``n`` cases with one distinct image each."""
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        scene(seed0 + i).save(root / f"img{i:02d}.png")
        cases.append(case_dict(i, [f"img{i:02d}.png"]))
    return write_jsonl(root / "cases.jsonl", cases)


class TinyCli:
    """``ragvqa kb …`` run in-process on ``data`` with ``--models tiny``: the session's checkpoint is copied where the
    model factory looks, so the CLI loads the same tiny model as the test."""

    def __init__(self, data: Path, tiny_model_dir: Path) -> None:
        self.data = data
        shutil.copytree(tiny_model_dir, data / "models" / "tiny")
        self._runner = CliRunner()

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        from knowledge_base.cli import kb_app

        return self._runner.invoke(kb_app, [*args, "--data-dir", str(self.data), "--models", "tiny"], env=env)

    def open_kb(self) -> KnowledgeBase:
        """The knowledge base the CLI wrote, opened without a model (stored vectors only)."""
        return KnowledgeBase.open(Settings(data_dir=self.data), None, strict=False)


def open_kb(kind: str, data_dir: Path, embedder: Any, options: IngestOptions = OPTIONS, **kw: Any) -> KnowledgeBase:
    """A KB on Qdrant Edge under ``data_dir`` or on qdrant-client local mode (in memory)."""
    settings = Settings(data_dir=data_dir, embed_batch_size=8, **kw)
    if kind == "edge":
        return KnowledgeBase.open(settings, embedder, options=options)
    store = open_store(embedder_id=KnowledgeBase.embedder_id_of(embedder, settings),
                       dim=settings.embed_dim or embedder.dim, qdrant_location=":memory:")
    return KnowledgeBase.open(settings, embedder, store=store, options=options)


_VOLATILE = {"created_at", "updated_at"}


def kb_state(kb: KnowledgeBase) -> dict[str, Any]:
    """Everything that defines a KB, minus wall-clock timestamps: points (payload + vector), files."""
    points: dict[str, Any] = {}
    for p in kb.store.scroll(with_vectors=True):
        pl = dict(p.payload)
        if "case" in pl:
            pl["case"] = {k: v for k, v in pl["case"].items() if k not in _VOLATILE}
        points[p.id] = (json.dumps(pl, sort_keys=True), p.vector)
    return {"points": points, "files": sorted(kb.media.iter_files())}


def assert_same_state(a: dict[str, Any], b: dict[str, Any], atol: float = 1e-4) -> None:
    assert a["files"] == b["files"]
    assert set(a["points"]) == set(b["points"])
    for pid, (pa, va) in a["points"].items():
        pb, vb = b["points"][pid]
        assert pa == pb, f"payload of {pid} differs"
        np.testing.assert_allclose(va, vb, atol=atol, err_msg=f"vector of {pid}")
