"""How clustering reads the store (knowledge_base/clusters.py ``case_vectors``): one vector per case from the points
written, whatever the page size, the backend or the order points come back in.

The reference is the rule of the module docstring computed here in float64 from the vectors these tests wrote:
``unit(unit(text) + unit(mean(unit(media))))``, the text vector alone for a case without media; a case with media
but no text point (an interrupted write) is left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kb_planted import Planted, grouped_cases, open_planted, unit

from knowledge_base.clusters import case_vectors
from rag.store import VectorPoint, point_id

DIM = 48


def _ref(c: Planted) -> np.ndarray:
    def u(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)
    text = u(c.points[0][1].astype(np.float64))
    media = [u(v.astype(np.float64)) for _, v in c.points[1:]]
    return text if not media else u(text + u(np.mean(media, axis=0)))


def _orphans(rng: np.random.Generator, n: int) -> list[VectorPoint]:
    """Media points of cases that have no text point (more of them than text cases: the read grows its arrays)."""
    return [VectorPoint(id=point_id(f"orphan-{k}", f"m{j}"), vector=unit(rng.normal(size=DIM)), payload={
        "case_id": f"orphan-{k}", "kind": "image", "media_id": f"m{j}", "thumbnail": f"thumbs/o{k}.jpg",
        "embedder": "planted-embedder"}) for k in range(n) for j in range(1 + k % 2)]


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_cold_read_equals_the_rule_on_written_vectors(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(11)
    cases = grouped_cases(rng, groups=3, per_group=6, dim=DIM)
    assert {len(c.points) for c in cases} >= {1, 2, 3}  # cases without media and with several
    store = open_planted(tmp_path / "q", cases, DIM, backend=backend)
    try:
        store.upsert(_orphans(rng, 25))
        by_id = {c.id: c for c in cases}
        results = []
        for batch in (1, 4, 7, 1024):  # a case's points in one page, or spread over pages
            cv = case_vectors(store, batch_size=batch)
            assert cv.ids == sorted(by_id) and cv.skipped_orphans == 25 and cv.read_from_store == len(cases)
            assert cv.vectors.dtype == np.float32 and cv.vectors.shape == (len(cases), DIM)
            for i, cid in enumerate(cv.ids):
                np.testing.assert_allclose(cv.vectors[i], _ref(by_id[cid]), atol=1e-5, err_msg=cid)
                assert cv.media_counts[i] == len(by_id[cid].points) - 1
                assert cv.product_lines[i] == by_id[cid].product_line and cv.titles[i] == f"Title of {cid}"
                assert (cv.thumbnails[i] is None) == (len(by_id[cid].points) == 1)
            results.append(cv.vectors)
        for v in results[1:]:
            np.testing.assert_allclose(v, results[0], atol=1e-6)
    finally:
        store.close()


def test_warm_read_equals_cold_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    cases = grouped_cases(rng, groups=2, per_group=5, dim=DIM)
    store = open_planted(tmp_path / "q", cases, DIM)
    try:
        cold = case_vectors(store, batch_size=3, cache_dir=tmp_path / "c")
        warm = case_vectors(store, batch_size=3, cache_dir=tmp_path / "c")
        assert cold.read_from_store == len(cases) and warm.read_from_store == 0 and warm.ids == cold.ids
        np.testing.assert_allclose(warm.vectors, cold.vectors, atol=1e-6)
        for i, cid in enumerate(cold.ids):
            np.testing.assert_allclose(cold.vectors[i], _ref(next(c for c in cases if c.id == cid)), atol=1e-5)
    finally:
        store.close()


def test_unreadable_cache_means_a_cold_read(tmp_path: Path) -> None:
    """A damaged cache file (cut short, or rows that do not match) is ignored with a warning: every vector is read
    from the store again, never a traceback and never a wrong vector."""
    rng = np.random.default_rng(8)
    cases = grouped_cases(rng, groups=2, per_group=4, dim=DIM)
    store = open_planted(tmp_path / "q", cases, DIM)
    cache = tmp_path / "c"
    try:
        case_vectors(store, cache_dir=cache)
        good = (cache / "case_vectors.npz").read_bytes()
        (cache / "case_vectors.npz").write_bytes(good[: len(good) // 2])
        cut = case_vectors(store, cache_dir=cache)
        assert cut.read_from_store == len(cases)
        with np.load(cache / "case_vectors.npz") as z:  # rewritten whole by that run; now break its rows
            parts = {k: z[k] for k in z.files}
        np.savez(cache / "case_vectors.npz", **{**parts, "vectors": parts["vectors"][:-1]})
        short = case_vectors(store, cache_dir=cache)
        assert short.read_from_store == len(cases)
        for cv in (cut, short):
            for i, cid in enumerate(cv.ids):
                np.testing.assert_allclose(cv.vectors[i], _ref(next(c for c in cases if c.id == cid)), atol=1e-5)
    finally:
        store.close()


def test_the_read_leaves_garbage_collection_as_it_found_it(tmp_path: Path) -> None:
    """The bulk read pauses the cyclic collector; it is back on afterwards, also when the read fails, and stays off
    for a caller that had turned it off."""
    import gc

    from rag.store import StoreError

    store = open_planted(tmp_path / "q", grouped_cases(np.random.default_rng(1), groups=1, per_group=3, dim=DIM), DIM)
    assert gc.isenabled()
    case_vectors(store, cache_dir=tmp_path / "c")
    assert gc.isenabled()
    store.close()
    with pytest.raises(StoreError, match="closed"):  # fails inside the paused read (the cache makes it payload-only)
        case_vectors(store, cache_dir=tmp_path / "c")
    assert gc.isenabled()
    gc.disable()
    try:
        store = open_planted(tmp_path / "q2", [], DIM)
        case_vectors(store)
        assert not gc.isenabled()
        store.close()
    finally:
        gc.enable()


def test_overlapping_reads_restore_garbage_collection_once() -> None:
    """Two reads overlapping in two threads: the collector stays off until the last one ends, then is back on,
    whichever ends first."""
    import gc

    from knowledge_base.clusters import _gc_paused

    assert gc.isenabled()
    for first_out in (0, 1):
        a, b = _gc_paused(), _gc_paused()
        a.__enter__()
        b.__enter__()
        (a, b)[first_out].__exit__(None, None, None)
        assert not gc.isenabled()
        (a, b)[1 - first_out].__exit__(None, None, None)
        assert gc.isenabled()
