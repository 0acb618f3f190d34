"""``VectorStore.scroll_arrays``: pages of points as arrays, on the real engines (Qdrant Edge, qdrant-client local mode,
and a Qdrant server when ``RAGVQA_QDRANT_URL`` is set).

Expected values are the points these tests wrote: their ids, their vectors (unit length: the stores are cosine, so
the engine keeps the direction; compared within 1e-6) and their payload fields. ``scroll`` is the second reference
for order and filters, since both promise the same points in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from kb_planted import unit
from test_store import DIM, Backend, backend  # noqa: F401 - the backend fixture (edge, local, server)

from rag.store import StoreError, VectorPoint, VectorStore, point_id
from rag.store.base import PointArrays

KEYS = ["case_id", "kind", "title"]


def _written(seed: int = 0, n_cases: int = 9) -> list[VectorPoint]:
    """Cases with a text point and 0-3 media points; every second media point lacks ``title`` (a missing key)."""
    rng = np.random.default_rng(seed)
    pts = []
    for c in range(n_cases):
        cid = f"case-{c}"
        line = ("printer", "pump", "hvac")[c % 3]
        pts.append(VectorPoint(id=point_id(cid), vector=unit(rng.normal(size=DIM)), payload={
            "case_id": cid, "kind": "text", "product_line": line, "title": f"Title {c}", "document": "d" * 50}))
        for m in range(c % 4):
            p = {"case_id": cid, "kind": "image", "product_line": line, "media_id": f"m{m}", "thumbnail": "t.jpg"}
            if m % 2 == 0:
                p["title"] = f"Title {c}"
            pts.append(VectorPoint(id=point_id(cid, f"m{m}"), vector=unit(rng.normal(size=DIM)), payload=p))
    return pts


@pytest.fixture
def filled(backend: Backend) -> Iterator[tuple[VectorStore, dict[str, VectorPoint]]]:  # noqa: F811
    store = backend.open()
    pts = _written()
    store.upsert(pts)
    try:
        yield store, {p.id: p for p in pts}
    finally:
        store.close()


def _concat(pages: list[PointArrays]) -> tuple[list[str], np.ndarray, list[dict]]:
    ids = [i for p in pages for i in p.ids]
    vecs = np.concatenate([p.vectors for p in pages]) if pages else np.zeros((0, DIM), np.float32)
    return ids, vecs, [pl for p in pages for pl in p.payloads]


def test_pages_hold_the_written_points(filled: tuple[VectorStore, dict[str, VectorPoint]]) -> None:
    store, written = filled
    pages = list(store.scroll_arrays(KEYS, batch_size=7))
    assert [len(p) for p in pages][:-1] == [7] * (len(pages) - 1) and 1 <= len(pages[-1]) <= 7
    assert len(pages) == math.ceil(len(written) / 7)
    ids, vecs, payloads = _concat(pages)
    assert sorted(ids) == sorted(written) and len(ids) == len(set(ids))
    assert ids == [p.id for p in store.scroll(batch_size=5)]  # the same id order as scroll
    assert vecs.dtype == np.float32 and vecs.shape == (len(written), DIM)
    for i, pid in enumerate(ids):
        np.testing.assert_allclose(vecs[i], written[pid].vector, atol=1e-6)
        assert payloads[i] == {k: written[pid].payload[k] for k in KEYS if k in written[pid].payload}
    assert any("title" not in pl for pl in payloads)  # a missing field stays missing (no None invented)


def test_filters_and_payload_choices(filled: tuple[VectorStore, dict[str, VectorPoint]]) -> None:
    store, written = filled
    for flt in ({"case_id": ["case-3", "case-5"]}, {"kind": "image"}, {"product_line": "pump", "kind": "text"},
                {"case_id": "no-such-case"}, {"tags": None}):
        def ok(p: VectorPoint, flt: dict = flt) -> bool:
            return all(v is None or p.payload.get(k) in ([v] if isinstance(v, str) else v) for k, v in flt.items())
        expected = sorted(pid for pid, p in written.items() if ok(p))
        ids, vecs, payloads = _concat(list(store.scroll_arrays(["case_id"], filters=flt, batch_size=4)))
        assert sorted(ids) == expected, flt
        assert ids == [p.id for p in store.scroll(filters=flt)], flt
        for i, pid in enumerate(ids):
            np.testing.assert_allclose(vecs[i], written[pid].vector, atol=1e-6)
            assert payloads[i] == {"case_id": written[pid].payload["case_id"]}
    # payloads only, and no payload at all
    pages = list(store.scroll_arrays(["kind"], with_vectors=False, batch_size=50))
    assert sum(len(p) for p in pages) == len(written)
    assert all(p.vectors.shape == (len(p), 0) for p in pages)
    assert {pl["kind"] for p in pages for pl in p.payloads} == {"text", "image"}
    bare = list(store.scroll_arrays([], batch_size=50))
    assert all(pl == {} for p in bare for pl in p.payloads) and sum(len(p) for p in bare) == len(written)


def test_empty_closed_and_bad_input(backend: Backend) -> None:  # noqa: F811
    store = backend.open()
    try:
        assert list(store.scroll_arrays(KEYS)) == []
        assert list(store.scroll_arrays(KEYS, filters={"kind": "text"}, with_vectors=False)) == []
        with pytest.raises(ValueError, match="unknown filter key 'colour'"):
            list(store.scroll_arrays(KEYS, filters={"colour": "red"}))
        with pytest.raises(ValueError, match="filter 'kind' values must be non-empty strings"):
            list(store.scroll_arrays(KEYS, filters={"kind": [""]}))
        with pytest.raises(ValueError, match="payload_keys must be a list"):
            list(store.scroll_arrays("case_id"))
        with pytest.raises(ValueError, match="payload_keys must be a list"):
            list(store.scroll_arrays(None))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            list(store.scroll_arrays(KEYS, batch_size=0))
    finally:
        store.close()
    with pytest.raises(StoreError, match="closed"):
        list(store.scroll_arrays(KEYS))


def test_point_arrays_rows_must_agree() -> None:
    with pytest.raises(ValueError, match="rows disagree"):
        PointArrays(ids=["a", "b"], vectors=np.zeros((1, 4), np.float32), payloads=[{}, {}])
    with pytest.raises(ValueError, match="rows disagree"):
        PointArrays(ids=["a"], vectors=np.zeros(1, np.float32), payloads=[{}])


def test_page_conversion_names_a_bad_record() -> None:
    """The conversion refuses, naming the point, a record whose vector is missing or of another length (the engines
    enforce the dim on write; this guards a store changed behind our back). Records are qdrant-client's own type."""
    from qdrant_client import models

    from rag.store.base import fill_vectors

    good = models.Record(id=1, vector={"dense": [0.5, 0.25, 0.125]}, payload={})
    np.testing.assert_array_equal(fill_vectors([good, good], 3, True), np.array([[0.5, 0.25, 0.125]] * 2, np.float32))
    with pytest.raises(StoreError, match="point 2: .*dim=3"):
        fill_vectors([good, models.Record(id=2, vector={"dense": [1.0, 2.0]}, payload={})], 3, True)
    with pytest.raises(StoreError, match="point 3 has no 'dense' vector"):
        fill_vectors([models.Record(id=3, vector={}, payload={})], 3, True)
    assert fill_vectors([good], 3, False).shape == (1, 0) and fill_vectors([], 3, True).shape == (0, 3)
