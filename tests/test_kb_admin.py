"""KnowledgeBase administration on real engines: update/delete round trips, listing and filters, export/import,
blue-green reindex, the model-mismatch guard, check/repair, and the ``ragvqa kb`` CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from kb_support import OPTIONS, case_dict, jpeg_bytes, kb_state, make_source, open_kb, scene, variant
from typer.testing import CliRunner

from knowledge_base.kb import CaseNotFoundError, CaseRejectedError, KnowledgeBase
from knowledge_base.schema import CaseInput
from rag.config import Settings
from rag.store import StoreError, StoreMismatchError, VectorPoint, open_store, point_id


@pytest.fixture(params=["edge", "local"])
def kb(request, tmp_path: Path, embedder):
    kb = open_kb(request.param, tmp_path / "data", embedder)
    kb.kind = request.param  # type: ignore[attr-defined]
    yield kb
    rep = kb.check()
    assert rep.problems == 0, rep.summary()
    kb.close()


def spy_writes(store, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Pass-through spy on the real store's two point-writing engine calls: records the ids each one writes."""
    seen: dict[str, list[str]] = {"upsert": [], "payload": []}
    upsert, overwrite = store._upsert, store._overwrite_payload

    def _upsert(points):
        seen["upsert"] += [p.id for p in points]
        return upsert(points)

    def _overwrite_payload(pid, payload):
        seen["payload"].append(pid)
        return overwrite(pid, payload)

    monkeypatch.setattr(store, "_upsert", _upsert)
    monkeypatch.setattr(store, "_overwrite_payload", _overwrite_payload)
    return seen


def test_add_update_delete_round_trip(kb: KnowledgeBase, tmp_path: Path, media_dir: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    scene(1).save(tmp_path / "one.png")
    r = kb.add_case(case_dict(1, ["one.png"]), media=[("two.jpg", jpeg_bytes(scene(2)))], base_dir=tmp_path)
    assert (r.status, r.media_embedded) == ("added", 2)
    kb.add_case(case_dict(2), media=[tmp_path / "one.png"])  # shares one.png: exact duplicate, linked
    case = kb.get("case-01")
    assert case is not None and case.version == 1 and [m.source_file for m in case.media] == ["one.png", "two.jpg"]

    # Text-only change: the text vector is recomputed, media vectors are reused and their points are not rewritten
    # at all (a rewrite sends the stored vector through the engine's normalisation again: last-bit changes on some
    # CPUs, and one more write to lose in a crash).
    text_pid, media_pids = point_id("case-01"), {point_id("case-01", m.id) for m in case.media}
    writes = spy_writes(kb.store, monkeypatch)
    before = {p.id: p.vector for p in kb.store.scroll(filters={"case_id": "case-01"}, with_vectors=True)}
    r = kb.update("case-01", {"symptom": "Now it beeps three times before stopping."})
    assert (r.status, r.media_embedded, r.media_reused) == ("updated", 0, 2)
    assert writes == {"upsert": [text_pid], "payload": []}
    after = {p.id: p.vector for p in kb.store.scroll(filters={"case_id": "case-01"}, with_vectors=True)}
    assert not np.allclose(before[text_pid], after[text_pid])
    for pid in media_pids:  # untouched points: 1e-6 absolute (unit vectors, a few float32 ulps), no bit-exactness
        np.testing.assert_allclose(after[pid], before[pid], rtol=0, atol=1e-6)
    # Payload-only change (tags): nothing embedded; the media points carry the tags for filtered search, so only
    # their payload is replaced (vectors untouched) and a tag filter finds them.
    writes.update(upsert=[], payload=[])
    assert kb.update("case-01", {"tags": ["x"]}).media_embedded == 0
    assert writes["upsert"] == [text_pid] and sorted(writes["payload"]) == sorted(media_pids)
    tagged = {p.id: p for p in kb.store.scroll(filters={"case_id": "case-01", "tags": "x"}, with_vectors=True)}
    assert set(tagged) == media_pids | {text_pid}
    for pid in media_pids:
        np.testing.assert_allclose(tagged[pid].vector, before[pid], rtol=0, atol=1e-6)
    assert kb.update("case-01", {"tags": ["x"]}).status == "skipped"  # no change

    # Add a video, remove an image by file name: one embedding, one point and one file gone.
    r = kb.update("case-01", add_media=[media_dir / "clip.mp4"], remove_media=["two.jpg"])
    assert r.media_embedded == 1
    case = kb.get("case-01")
    assert case is not None and case.version == 4 and [m.kind for m in case.media] == ["image", "video"]
    assert kb.store.count({"case_id": "case-01"}) == 3 and len(list(kb.media.iter_files())) == 2

    # A CaseInput (what the admin form sends) updates fields and adds its files.
    scene(5).save(tmp_path / "five.png")
    ci = CaseInput.model_validate({**case_dict(1, [{"path": "five.png"}]), "title": "Renamed"})
    assert kb.update(ci, base_dir=tmp_path).media_embedded == 1
    assert kb.get("case-01").title == "Renamed" and len(kb.get("case-01").media) == 3  # type: ignore[union-attr]

    # A form save that does not touch links keeps them (case-02 was linked to case-01 as a duplicate).
    ci2 = CaseInput.model_validate({**{k: v for k, v in case_dict(2).items() if k != "media"}, "title": "Retitled"})
    kb.update(ci2)
    assert [lk.case_id for lk in kb.get("case-02").links] == ["case-01"]  # type: ignore[union-attr]

    with pytest.raises(CaseNotFoundError):
        kb.update("nope", {"title": "x"})
    with pytest.raises(ValueError, match="cannot update"):
        kb.update("case-01", {"version": 9})
    with pytest.raises(CaseRejectedError, match="no media"):
        kb.update("case-01", remove_media=["missing.png"])

    # Delete: text point first, then media points, then files nobody else uses.
    assert kb.delete("case-01") is True and kb.get("case-01") is None
    assert kb.store.count({"case_id": "case-01"}) == 0 and not list(kb.media.iter_files())
    assert kb.delete("case-01") is False
    assert kb.get("case-02") is not None


def test_overwrite_payload_checks_everything_first(kb: KnowledgeBase, tmp_path: Path) -> None:
    """The payload-only write behind updates: all payloads checked before the first write, vectors untouched."""
    kb.add_case(case_dict(1), media=[("one.jpg", jpeg_bytes(scene(1)))])
    mid = kb.get("case-01").media[0].id  # type: ignore[union-attr]
    pid = point_id("case-01", mid)
    (before,) = kb.store.retrieve([pid], with_vectors=True)
    good = {**before.payload, "tags": ["new"]}
    with pytest.raises(ValueError, match=r"payload\['tags'\] must be a list of strings"):
        kb.store.overwrite_payload({pid: good, point_id("case-01"): {**good, "tags": "not-a-list"}})
    assert kb.store.retrieve([pid])[0].payload == before.payload  # the valid one was not written either
    with pytest.raises(StoreError):
        kb.store.overwrite_payload({point_id("case-01", "no-such-media"): good})  # only existing points
    assert kb.store.overwrite_payload({pid: before.payload}) == 1
    (after,) = kb.store.retrieve([pid], with_vectors=True)
    np.testing.assert_allclose(after.vector, before.vector, rtol=0, atol=1e-6)


def test_list_filters_search_and_stats(kb: KnowledgeBase, tmp_path: Path, embedder) -> None:
    kb.import_path(make_source(tmp_path / "src", 6))
    page = kb.list_cases()
    assert page.total == 6 and [c.id for c in page.cases] == [f"case-{i:02d}" for i in range(6)]
    assert [c.id for c in kb.list_cases({"product_line": "pump"}).cases] == ["case-01", "case-04"]
    assert kb.list_cases({"product_line": ["pump", "hvac"], "equipment_model": "M0"}).total == 2
    assert kb.list_cases({"tags": "t1"}).total == 3
    assert [c.id for c in kb.list_cases(text="E03").cases] == ["case-03"]
    assert [c.id for c in kb.list_cases(text="component 4").cases] == ["case-04"]
    assert [c.id for c in kb.list_cases(limit=2, offset=3).cases] == ["case-03", "case-04"]
    with pytest.raises(ValueError, match="unknown filter"):
        kb.list_cases({"severity": "high"})
    st = kb.stats()
    assert st["cases"] == 6 and st["points"] == 12 and st["media"] == {"image": 6}
    assert st["product_lines"] == {"hvac": 2, "printer": 2, "pump": 2} and st["media_files"] == 6
    assert st["store"]["embedder_id"] == kb.embedder_id
    # Store filters the pipeline uses return only matching cases, and the query image still ranks its case first.
    q = embedder.embed([{"image": variant(scene(4))}])[0]
    hits = kb.store.search_cases(q, limit_cases=6, filters={"product_line": "pump"}, exact=True)
    assert [h.case_id for h in hits][0] == "case-04" and {h.case_id for h in hits} == {"case-01", "case-04"}


def test_export_import_round_trip(kb: KnowledgeBase, tmp_path: Path, embedder) -> None:
    kb.import_path(make_source(tmp_path / "src", 3))
    kb.update("case-00", {"title": "Edited after import"})
    zpath = kb.export(tmp_path / "out" / "backup.zip")
    assert kb.import_path(zpath).skipped == 3  # restoring into the same KB is a no-op
    other = open_kb("local" if kb.kind == "edge" else "edge", tmp_path / "restored", embedder)  # type: ignore[attr-defined]
    try:
        res = other.import_path(zpath)
        assert res.added == 3 and res.media_embedded == 3
        for cid in ("case-00", "case-01", "case-02"):
            assert other.get(cid) == kb.get(cid)  # versions and timestamps preserved
        a, b = kb_state(kb), kb_state(other)
        assert a["files"] == b["files"] and set(a["points"]) == set(b["points"])
        assert other.check().problems == 0
    finally:
        other.close()


def test_reindex_blue_green(kb: KnowledgeBase, tmp_path: Path, embedder) -> None:
    kb.import_path(make_source(tmp_path / "src", 3))
    old_meta = kb.store.meta
    res = kb.reindex(embedder, dim=64, embedder_id="tiny-mrl-64")
    assert (res.cases, res.points, res.dim) == (3, 6, 64) and not res.skipped_media
    assert kb.store.meta.embedder_id == "tiny-mrl-64" and kb.dim == 64 and kb.embedder_id == "tiny-mrl-64"
    assert kb.count_cases() == 3 and kb.check().problems == 0
    q = embedder.embed([{"image": variant(scene(1))}], dim=64)[0]
    assert kb.store.search_cases(q, limit_cases=1, exact=True)[0].case_id == "case-01"
    # New writes use the new store and vectors.
    kb.add_case(case_dict(7), media=[("seven.png", jpeg_bytes(scene(7)))])
    assert kb.store.retrieve([point_id("case-07")], with_vectors=True)[0].vector.shape == (64,)  # type: ignore[union-attr]
    if kb.kind == "edge":  # type: ignore[attr-defined]
        kb.close()
        settings = Settings(data_dir=tmp_path / "data")
        with pytest.raises(StoreMismatchError, match="reindex"):
            open_store(embedder_id=old_meta.embedder_id, dim=old_meta.dim, data_dir=settings.data_dir)
        reopened = open_store(embedder_id="tiny-mrl-64", dim=64, data_dir=settings.data_dir)
        kb.store = reopened
        assert kb.count_cases() == 4


class _Renamed:
    """The same model under another name: what a configuration change to another embedder looks like."""

    def __init__(self, inner, name: str) -> None:
        self._inner, self.name = inner, name

    def __getattr__(self, item):
        return getattr(self._inner, item)


def test_model_mismatch_refused(kb: KnowledgeBase, tmp_path: Path, embedder) -> None:
    kb.import_path(make_source(tmp_path / "src", 1))
    other = _Renamed(embedder, "Qwen/Some-Other-Embedding")
    if kb.kind == "edge":  # type: ignore[attr-defined]
        kb.store.flush()
        settings = Settings(data_dir=tmp_path / "data")
        kb.close()
        with pytest.raises(StoreMismatchError) as e:
            KnowledgeBase.open(settings, other, options=OPTIONS)
        kb.store = open_store(embedder_id=kb.embedder_id, dim=kb.dim, data_dir=settings.data_dir)
    else:
        with pytest.raises(StoreMismatchError) as e:
            KnowledgeBase.open(kb.settings, other, store=kb.store, options=OPTIONS)
    msg = str(e.value)
    assert "Qwen/Some-Other-Embedding" in msg and kb.embedder_id in msg and "ragvqa kb reindex" in msg
    # Maintenance mode opens it anyway and check() names the problem.
    loose = KnowledgeBase.open(kb.settings, other, store=kb.store, options=OPTIONS, strict=False)
    assert loose.check().meta_problem is not None


def test_check_finds_and_repairs(kb: KnowledgeBase, tmp_path: Path, media_dir: Path) -> None:
    kb.import_path(make_source(tmp_path / "src", 4))
    c0, c1, c2, c3 = (kb.get(f"case-{i:02d}") for i in range(4))
    assert c0 and c1 and c2 and c3
    kb.store.delete_points([point_id("case-00")])  # orphan media point (as after a crash mid-import)
    kb.store.delete_points([point_id("case-01", c1.media[0].id)])  # missing point
    kb.media.delete(c2.media[0].path)  # missing file
    kb.media.put_bytes(jpeg_bytes(scene(99)), name="stray.jpg")  # unreferenced file
    p = kb.store.retrieve([point_id("case-03", c3.media[0].id)], with_vectors=True)[0]
    kb.store.upsert([VectorPoint(id=p.id, vector=p.vector, payload={**p.payload, "embedder": "someone-else",
                                                                      "tags": ["wrong"]})])
    (kb.media.root / ".tmp").mkdir(exist_ok=True)
    (kb.media.root / ".tmp" / "left.part").write_bytes(b"x")
    rep = kb.check()
    counts = {k: v for k, v in rep.counts().items() if v}
    assert counts == {"orphan_points": 1, "missing_points": 1, "missing_files": 1, "unreferenced_files": 2,
                      "embedder_mismatch": 1, "payload_mismatch": 1, "temp_files": 1}, rep.summary()
    fixed = kb.check(fix=True)
    assert fixed.fixed and kb.check().problems == 0
    assert kb.store.count({"case_id": "case-01"}) == 2  # the missing point was re-embedded
    c2b = kb.get("case-02")
    assert c2b is not None and not c2b.media and c2b.version == 2  # the dangling media item was dropped
    assert kb.store.retrieve([point_id("case-03", c3.media[0].id)])[0].payload["tags"] == c3.tags


def test_cli_commands(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``ragvqa kb`` end to end with ``--models tiny`` (the session checkpoint copied where the factory looks)."""
    from knowledge_base.cli import kb_app

    data = tmp_path / "data"
    shutil.copytree(tiny_model_dir, data / "models" / "tiny")
    src = make_source(tmp_path / "src", 3)
    run = CliRunner().invoke
    common = ["--data-dir", str(data), "--models", "tiny"]

    r = run(kb_app, ["import", str(src), "--json", *common])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["added"] == 3
    r = run(kb_app, ["list", "--json", "--product-line", "pump", *common])
    assert r.exit_code == 0 and [c["id"] for c in json.loads(r.stdout)["cases"]] == ["case-01"]
    r = run(kb_app, ["show", "case-01", *common])
    assert r.exit_code == 0 and "Fault number 1" in r.stdout
    scene(8).save(tmp_path / "eight.png")
    r = run(kb_app, ["add", "--title", "Pump noise", "--product-line", "pump", "--symptom", "Loud grinding noise at start",
                     "--step", "Check bearing", "--tag", "noise", "--media", str(tmp_path / "eight.png"), *common])
    assert r.exit_code == 0 and "added" in r.stdout, r.output
    r = run(kb_app, ["update", "case-02", "--set", "tags=a|b", "--set", "title=New title", "--json", *common])
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "updated", r.output
    r = run(kb_app, ["stats", "--json", *common])
    assert json.loads(r.stdout)["cases"] == 4
    r = run(kb_app, ["export", str(tmp_path / "b.zip"), *common])
    assert r.exit_code == 0 and (tmp_path / "b.zip").is_file()
    r = run(kb_app, ["delete", "case-00", "--yes", *common])
    assert r.exit_code == 0
    r = run(kb_app, ["check", "--json", *common])
    assert r.exit_code == 0 and json.loads(r.stdout)["problems"] == 0, r.output
    r = run(kb_app, ["import", str(tmp_path / "missing.jsonl"), *common])
    assert r.exit_code == 1 and "not found" in r.output
    r = run(kb_app, ["show", "nope", *common])
    assert r.exit_code == 1


# -- reindex applies the configured store settings (issue 11) ----------------------------------------------------------
_SERVER_URL = __import__("os").environ.get("RAGVQA_QDRANT_URL")


def _engine_store_config(store) -> dict:
    """The new store's index config as the engine holds it: Edge's persisted shard config (``edge_config.json``,
    written by the engine) or the server's collection info. Never the product's own StoreMeta."""
    from rag.store import EdgeStore

    if isinstance(store, EdgeStore):
        cfg = json.loads((store.shard_dir / "edge_config.json").read_text())
        return {"quantization": cfg.get("quantization_config"), "hnsw_m": cfg["hnsw_config"]["m"]}
    info = store.client.get_collection(store.collection).config
    q = info.quantization_config
    return {"quantization": None if q is None else {"scalar": {"type": str(q.scalar.type.value)}},
            "hnsw_m": info.hnsw_config.m}


def _is_int8(cfg: dict) -> bool:
    q = cfg["quantization"]
    return q is not None and q["scalar"]["type"] == "int8"


@pytest.mark.parametrize("backend", ["edge", pytest.param(
    "server", marks=pytest.mark.skipif(not _SERVER_URL, reason="RAGVQA_QDRANT_URL not set (no Qdrant server to test)"))])
def test_reindex_applies_configured_quantization(backend: str, tmp_path: Path, embedder) -> None:
    """``reindex`` builds the new store with RAGVQA_STORE_QUANTIZATION (both directions) and the configured HNSW m,
    as the open-time warning promises, instead of copying the old store's quantization."""
    import uuid

    extra = {} if backend == "edge" else {"qdrant_url": _SERVER_URL, "qdrant_collection": f"ragvqa_t_{uuid.uuid4().hex[:8]}"}
    base = Settings(data_dir=tmp_path / "data", embed_batch_size=8, store_quantization=True, **extra)
    kb = KnowledgeBase.open(base, embedder, options=OPTIONS)
    try:
        kb.import_path(make_source(tmp_path / "src", 2))
        assert _is_int8(_engine_store_config(kb.store))
        for quant, m in ((False, 8), (True, 12)):
            kb.close()  # a configuration change = a new process with new settings
            kb = KnowledgeBase.open(base.model_copy(update={"store_quantization": quant, "store_hnsw_m": m}), embedder,
                                    options=OPTIONS, strict=False)
            res = kb.reindex(embedder)
            cfg = _engine_store_config(kb.store)
            assert _is_int8(cfg) is quant, cfg
            assert cfg["hnsw_m"] == m
            assert res.quantization is quant and res.to_dict()["quantization"] is quant
            assert kb.count_cases() == 2 and kb.check().problems == 0
        # an explicit override wins over the setting
        kb.reindex(embedder, quantization=False)
        assert not _is_int8(_engine_store_config(kb.store))
    finally:
        if backend == "server":
            client = kb.store.client
            for c in client.get_collections().collections:
                if c.name.startswith(extra["qdrant_collection"]):
                    client.delete_collection(c.name)
        kb.close()


def test_cli_reindex_applies_configured_quantization(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``ragvqa kb reindex``: RAGVQA_STORE_QUANTIZATION=false turns an int8 store into a float one; the flag back."""
    from knowledge_base.cli import kb_app

    data = tmp_path / "data"
    shutil.copytree(tiny_model_dir, data / "models" / "tiny")
    common = ["--data-dir", str(data), "--models", "tiny"]
    run = CliRunner().invoke

    def shard_config() -> dict:
        active = (data / "qdrant" / "ACTIVE").read_text().strip()
        return json.loads((data / "qdrant" / active / "shard" / "edge_config.json").read_text())

    r = run(kb_app, ["import", str(make_source(tmp_path / "src", 2)), *common], env={"RAGVQA_STORE_QUANTIZATION": "true"})
    assert r.exit_code == 0, r.output
    assert shard_config()["quantization_config"]["scalar"]["type"] == "int8"
    r = run(kb_app, ["reindex", "--yes", "--json", *common], env={"RAGVQA_STORE_QUANTIZATION": "false"})
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["quantization"] is False
    assert shard_config().get("quantization_config") is None
    r = run(kb_app, ["reindex", "--quantization", *common], input="y\n", env={"RAGVQA_STORE_QUANTIZATION": "false"})
    assert r.exit_code == 0, r.output
    assert "float32) →" in r.output and "int8)?" in r.output  # the confirmation names the change
    assert shard_config()["quantization_config"]["scalar"]["type"] == "int8"
    r = run(kb_app, ["check", "--json", *common])
    assert r.exit_code == 0 and json.loads(r.stdout)["problems"] == 0, r.output
