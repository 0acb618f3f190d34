"""Ingestion on the real tiny Qwen3-VL checkpoint and real Qdrant engines (Edge and qdrant-client local mode):
readers (JSONL, CSV, folder, zip), idempotent re-import, partial re-embedding, the payload contract the pipeline
reads, duplicates, PDF pages, videos, and rejection that writes nothing."""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from kb_support import NEAR_DUP, OPTIONS, case_dict, jpeg_bytes, make_source, open_kb, scene, variant, write_jsonl

from knowledge_base.archive import IngestInputError
from knowledge_base.kb import KnowledgeBase
from knowledge_base.pdf import images_to_pdf
from rag.store import point_id
from rag.validation import InputRejected

TEXT_KEYS = {"case_id", "media_id", "kind", "product_line", "equipment_model", "tags", "title", "case", "document",
             "content_hash"}
MEDIA_KEYS = {"case_id", "media_id", "kind", "product_line", "equipment_model", "tags", "title", "media_path",
              "thumbnail", "caption", "page", "sha256"}


@pytest.fixture(params=["edge", "local"])
def kb(request, tmp_path: Path, embedder):
    kb = open_kb(request.param, tmp_path / "data", embedder)
    yield kb
    rep = kb.check()
    assert rep.problems == 0, rep.summary()
    kb.close()


@pytest.fixture
def edge_kb(tmp_path: Path, embedder):
    kb = open_kb("edge", tmp_path / "data", embedder)
    yield kb
    rep = kb.check()
    assert rep.problems == 0, rep.summary()
    kb.close()


def test_jsonl_import_query_reimport_and_partial_update(kb: KnowledgeBase, tmp_path: Path, embedder) -> None:
    src = make_source(tmp_path / "src", 4)
    res = kb.import_path(src)
    assert (res.added, res.rejected, res.media_embedded) == (4, 0, 4), res.to_dict()

    # Payload contract: exactly what rag/pipeline/retrieve.py reads.
    text = kb.store.retrieve([point_id("case-02")])[0].payload
    assert TEXT_KEYS <= set(text) and text["kind"] == "text" and text["media_id"] is None
    case = kb.get("case-02")
    assert case is not None and text["case"] == case.model_dump(mode="json")
    assert text["document"] == case.document_text() and text["product_line"] == "hvac"
    m = case.media[0]
    media = kb.store.retrieve([point_id("case-02", m.id)])[0].payload
    assert MEDIA_KEYS <= set(media) and media["kind"] == "image" and media["media_path"] == m.path
    assert (kb.media_root / media["media_path"]).is_file() and (kb.media_root / media["thumbnail"]).is_file()
    assert kb.media_root == Path(kb.settings.data_dir) / "media"

    # A customer photo of a KB image (resized, JPEG re-encoded) finds its case first.
    q = embedder.embed([{"image": variant(scene(2))}])[0]
    hits = kb.store.search_cases(q, limit_cases=3, exact=True)
    assert hits[0].case_id == "case-02"

    # Idempotent: nothing changes, nothing is embedded.
    again = kb.import_path(src)
    assert (again.skipped, again.added, again.updated, again.media_embedded) == (4, 0, 0, 0)

    # Changed input: only the changed parts are re-embedded.
    cases = [json.loads(line) for line in src.read_text().splitlines()]
    cases[0]["tags"] = ["synthetic", "retagged"]  # payload-only change: no embedding at all
    scene(50).save(tmp_path / "src" / "new.png")
    cases[1]["media"] = ["img01.png", "new.png"]  # one new image
    write_jsonl(src, cases)
    upd = kb.import_path(src)
    assert (upd.updated, upd.skipped, upd.media_embedded) == (2, 2, 1), upd.to_dict()
    c0, c1 = kb.get("case-00"), kb.get("case-01")
    assert c0 is not None and c1 is not None
    assert c0.version == 2 and c0.tags == ["synthetic", "retagged"] and len(c1.media) == 2
    assert kb.store.retrieve([point_id("case-00", c0.media[0].id)])[0].payload["tags"] == ["synthetic", "retagged"]
    assert kb.list_cases({"tags": "retagged"}).total == 1


def test_csv_lists_errors_and_nothing_written_for_rejects(edge_kb: KnowledgeBase, tmp_path: Path) -> None:
    d = tmp_path / "csv"
    d.mkdir()
    scene(1).save(d / "a.png")
    scene(2).save(d / "b.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    rows = [
        "id,title,product_line,model,symptom,steps,error_codes,tags,images,captions",
        'c-ok,Paper jam,printer,P1,Jams in tray 2,Open tray | Remove paper; carefully,E1;E2,jam;tray,a.png|b.png,front|back',
        "c-missing-title,,printer,P1,No title here,,,,,",
        "c-no-file,Lost,printer,P1,Media is missing,,,,nowhere.png,",
        "c-corrupt,Corrupt,printer,P1,Has a broken image,,,,a.png|bad.png,",
    ]
    (d / "cases.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    res = edge_kb.import_path(d / "cases.csv")
    by = {i.where.split(":")[-1]: i for i in res.items}
    assert res.added == 1 and res.rejected == 3
    assert by["row 3"].status == "rejected" and "title" in by["row 3"].reason
    assert "nowhere.png" in by["row 4"].reason and "not found" in by["row 4"].reason
    assert "bad.png" in by["row 5"].reason
    c = edge_kb.get("c-ok")
    assert c is not None and c.solution == ["Open tray", "Remove paper; carefully"]  # '|' wins over ';'
    assert c.error_codes == ["E1", "E2"] and c.tags == ["jam", "tray"] and [m.caption for m in c.media] == ["front", "back"]
    # The corrupt row wrote nothing: only c-ok's two files exist and the store holds only c-ok.
    assert len(list(edge_kb.media.iter_files())) == 2 and edge_kb.store.case_ids() == {"c-ok"}

    (d / "extra.csv").write_text("title,product_line,symptom,colour\nx,y,z,red\n", encoding="utf-8")
    with pytest.raises(IngestInputError, match="unknown column.*colour"):
        edge_kb.import_path(d / "extra.csv")


def _folder_source(root: Path, media_dir: Path) -> Path:
    """Two case folders: one listing its media (with captions), one picked up by extension (PNG, PDF, video)."""
    a, b = root / "pump-seal-leak", root / "Printer E5"
    a.mkdir(parents=True)
    b.mkdir()
    scene(10).save(a / "leak.png")
    (a / "case.json").write_text(json.dumps({**case_dict(10), "id": None, "media": [{"path": "leak.png", "caption": "seal"}]}))
    scene(11).save(b / "panel.png")
    images_to_pdf([scene(12, 200, 280), scene(13, 280, 200), scene(14, 200, 280)], b / "manual.pdf")
    shutil.copy(media_dir / "clip.mp4", b / "clip.mp4")
    d = case_dict(11)
    del d["media"], d["id"]
    (b / "case.json").write_text(json.dumps(d))
    return root


def test_folder_pdf_video_and_zip(kb: KnowledgeBase, tmp_path: Path, media_dir: Path, embedder) -> None:
    folder = _folder_source(tmp_path / "folder", media_dir)
    kb.options = kb.options.model_copy(update={"pdf_max_pages": 2})
    res = kb.import_path(folder)
    assert res.added == 2 and res.rejected == 0, res.to_dict()
    a, b = kb.get("pump-seal-leak"), kb.get("printer-e5")  # ids from folder names
    assert a is not None and b is not None
    assert [(m.kind, m.caption) for m in a.media] == [("image", "seal")]
    kinds = [(m.kind, m.source_file, m.page) for m in b.media]
    assert kinds == [("video", "clip.mp4", None), ("pdf_page", "manual.pdf", 1), ("pdf_page", "manual.pdf", 2),
                     ("image", "panel.png", None)]
    report = next(i for i in res.items if i.case_id == "printer-e5")
    assert any("3 pages; only the first 2" in w for w in report.warnings), report.warnings
    page = b.media[1]
    assert page.mime == "image/png" and max(page.width or 0, page.height or 0) == 256  # rendered page image
    pts = {p.payload["media_id"]: p.payload for p in kb.store.scroll(filters={"case_id": "printer-e5"})
           if p.payload["media_id"]}
    assert pts[page.id]["page"] == 1 and pts[page.id]["kind"] == "pdf_page" and pts[b.media[0].id]["kind"] == "video"
    assert pts[b.media[0].id]["thumbnail"]

    # The same folder zipped (under a top-level dir) imports to the same cases; into the same KB it is a no-op.
    zpath = tmp_path / "kb.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in folder.rglob("*"):
            if f.is_file():
                zf.write(f, "export/" + f.relative_to(folder).as_posix())
    assert kb.import_path(zpath).skipped == 2
    other = open_kb("edge", tmp_path / "other", embedder, options=kb.options)
    try:
        res2 = other.import_path(zpath)
        assert res2.added == 2 and res2.items[0].where.startswith("kb.zip!")
        assert other.get("printer-e5").media == b.media  # type: ignore[union-attr]
        assert other.check().problems == 0
    finally:
        other.close()


def _zip(path: Path, entries: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize("name, mode, code", [
    ("../evil.png", None, "zip_slip"),
    ("/abs/evil.png", None, "zip_absolute_path"),
    ("link.png", stat.S_IFLNK | 0o777, "zip_symlink"),
])
def test_unsafe_zip_refused_and_nothing_written(edge_kb: KnowledgeBase, tmp_path: Path, name: str, mode: int | None,
                                                code: str) -> None:
    ok = json.dumps(case_dict(1, ["a.png"])).encode()
    z = _zip(tmp_path / "bad.zip", [("cases.jsonl", ok, None), ("a.png", jpeg_bytes(scene(1)), None),
                                    (name, b"/etc/passwd", mode)])
    with pytest.raises(InputRejected) as e:
        edge_kb.import_path(z)
    assert e.value.code == code and "bad.zip" in str(e.value)
    assert edge_kb.count_cases() == 0 and not list(edge_kb.media.iter_files())


def test_zip_media_paths_confined(edge_kb: KnowledgeBase, tmp_path: Path) -> None:
    """A JSONL inside a zip may not point at files outside the archive."""
    outside = tmp_path / "secret.png"
    scene(3).save(outside)
    z = _zip(tmp_path / "k.zip", [("cases.jsonl", json.dumps(case_dict(3, [str(outside)])).encode() + b"\n" +
                                   json.dumps(case_dict(4, ["../secret.png"])).encode(), None)])
    res = edge_kb.import_path(z)
    assert res.rejected == 2 and all("inside the import" in i.reason for i in res.items), res.to_dict()


def test_exact_and_near_duplicates(kb: KnowledgeBase, tmp_path: Path) -> None:
    d = tmp_path / "dups"
    d.mkdir()
    scene(20).save(d / "orig.png")
    scene(21).save(d / "own.png")
    (d / "reshot.jpg").write_bytes(jpeg_bytes(scene(20), 90))  # same scene, re-encoded: a near duplicate
    scene(22).save(d / "twin.png")
    write_jsonl(d / "first.jsonl", [case_dict(1, ["orig.png"])])
    assert kb.import_path(d / "first.jsonl").added == 1
    write_jsonl(d / "second.jsonl", [
        case_dict(1, ["orig.png"]),  # unchanged (skipped), in the same chunk as its duplicates
        case_dict(2, ["orig.png", "own.png"]),  # exact duplicate of case-01's file + its own image
        case_dict(3, ["reshot.jpg"]),  # near duplicate of case-01's image
        case_dict(4, ["twin.png"]),
        case_dict(5, ["twin.png"]),  # exact duplicate of case-04 (next chunk: found through the store)
        case_dict(6, ["twin.png"]),  # ... and in the same chunk as case-05
    ])
    res = kb.import_path(d / "second.jsonl")
    assert res.added == 5 and res.skipped == 1
    dups = {(x.case_id, x.kind, x.other_case_id) for x in res.duplicates}
    assert dups == {("case-02", "exact", "case-01"), ("case-03", "near", "case-01"), ("case-05", "exact", "case-04"),
                    ("case-06", "exact", "case-04")}
    near = next(x for x in res.duplicates if x.kind == "near")
    assert near.score >= NEAR_DUP and near.media == "reshot.jpg"
    c2, c3 = kb.get("case-02"), kb.get("case-03")
    assert c2 is not None and c3 is not None
    assert [m.source_file for m in c2.media] == ["own.png"] and not c3.media
    assert [(lk.case_id, lk.relation) for lk in c2.links] == [("case-01", "near_duplicate")]
    assert [(lk.case_id, lk.relation) for lk in c3.links] == [("case-01", "near_duplicate")]
    # Stored once: orig, own, twin (the re-shot copy was not kept).
    assert len(list(kb.media.iter_files())) == 3
    assert kb.store.count({"kind": ["image", "pdf_page"]}) == 3
    # The admin review lists nothing at the import threshold now (duplicates were linked, not stored).
    assert kb.near_duplicates(NEAR_DUP) == []


def test_rejected_case_writes_nothing_and_api_add(edge_kb: KnowledgeBase, media_dir: Path, tmp_path: Path) -> None:
    from knowledge_base.kb import CaseRejectedError

    before = set(edge_kb.media.iter_files())
    with pytest.raises(CaseRejectedError, match="corrupt.png") as e:
        edge_kb.add_case(case_dict(7), media=[media_dir / "a.png", media_dir / "corrupt.png"])
    assert e.value.report.status == "rejected"
    assert set(edge_kb.media.iter_files()) == before and edge_kb.store.count() == 0
    with pytest.raises(CaseRejectedError, match="symptom"):
        edge_kb.add_case({**case_dict(8), "symptom": ""})
    with pytest.raises(CaseRejectedError, match="U\\+202E"):  # shared text rules: no bidi overrides
        edge_kb.add_case({**case_dict(8), "title": "evil \u202e title"})
    report = edge_kb.add_case(case_dict(9), media=[("upload.jpg", jpeg_bytes(scene(9)))])
    assert report.status == "added" and edge_kb.get("case-09").media[0].source_file == "upload.jpg"  # type: ignore[union-attr]


@pytest.mark.slow  # builds and embeds the whole sample KB (~1 min on 2 cores)
def test_sample_kb_imports_cleanly(tmp_path: Path, embedder) -> None:
    kb = open_kb("edge", tmp_path / "data", embedder, options=OPTIONS.model_copy(update={"near_dup_threshold": None}))
    try:
        res = kb.ensure_sample(tmp_path / "sample")
        assert res is not None and res.rejected == 0 and res.added > 0, res.to_dict()
        kinds = {m.kind for c in kb.list_cases(limit=1000).cases for m in c.media}
        assert kinds == {"image", "pdf_page", "video"}
        assert kb.ensure_sample(tmp_path / "sample") is None  # only into an empty KB
        assert kb.check().problems == 0
    finally:
        kb.close()


def test_bench_ingest_smoke(tiny_model_dir: Path, tmp_path: Path) -> None:
    from eval.bench_ingest import run_ingest_bench, write_report

    res = run_ingest_bench(tiny_model_dir, n_cases=3, images_per_case=1, image_size=(96, 72), repeats=1,
                           work_dir=tmp_path / "work")
    assert res["check_problems"] == 0 and res["reimport_unchanged"]["skipped"] == 3
    assert res["ratio"] > 0 and res["cpu"]["ratio"] > 0
    js, md = write_report(res, tmp_path / "out")
    assert json.loads(js.read_text())["config"]["n_cases"] == 3 and "raw embedder" in md.read_text()
