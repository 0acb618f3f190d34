"""``ragvqa eval kb`` (eval/kb_eval.py): the metric parts on planted structure through the real store, the sample
ground truth, and the whole command on the tiny model (mechanics only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from test_kb_clusters import DIM, EMBEDDER, plant

from eval.kb_eval import KBEvalError, eval_clusters, eval_related, ground_truth
from knowledge_base.kb import KnowledgeBase
from knowledge_base.media_store import MediaStore
from rag.config import Settings
from rag.store import StoreMeta
from rag.store.edge import EdgeStore


@pytest.fixture()
def planted_kb(tmp_path: Path):
    store = EdgeStore.open(tmp_path / "qdrant", StoreMeta(embedder_id=EMBEDDER, dim=DIM))
    gt = plant(store, seed=1)
    kb = KnowledgeBase(settings=Settings(data_dir=tmp_path), embedder=None, store=store,
                       media=MediaStore(tmp_path / "media"))
    yield kb, gt
    kb.close()


def test_cluster_agreement_is_the_sklearn_score_of_the_planted_partition(planted_kb) -> None:
    kb, gt = planted_kb
    truth = gt["truth"]
    # families = the planted groups, each noise case a family of its own: the clusters recover them exactly
    families = {c: (f"g{g}" if g >= 0 else c) for c, g in truth.items()}
    res = eval_clusters(kb, families, min_cluster_size=3)
    assert res["nmi"] == pytest.approx(1.0) and res["ari"] == pytest.approx(1.0)
    assert res["n_unclustered"] == sum(g < 0 for g in truth.values())
    # families that lump groups 0 and 1 together: the clusters (= the planted groups) now disagree, by exactly
    # sklearn's scores of planted groups against those families
    lumped = {c: ("g01" if f in ("g0", "g1") else f) for c, f in families.items()}
    ids = sorted(truth)
    planted_labels = [families[c] for c in ids]
    res = eval_clusters(kb, lumped, min_cluster_size=3)
    assert res["ari"] == pytest.approx(adjusted_rand_score([lumped[c] for c in ids], planted_labels), abs=1e-4)
    assert res["nmi"] == pytest.approx(normalized_mutual_info_score([lumped[c] for c in ids], planted_labels), abs=1e-4)
    with pytest.raises(KBEvalError, match="ground-truth family"):
        eval_clusters(kb, {"not-stored": "x"}, min_cluster_size=3)


def test_related_precision_on_a_planted_near_identical_pair(planted_kb) -> None:
    kb, gt = planted_kb
    a, b = gt["pair"]
    res = eval_related(kb, [(a, b)], k=1)  # the twin is the nearest case by construction
    assert res["precision_at_k"] == 1.0 and res["recall_at_k"] == 1.0 and res["n_cases"] == 2
    res = eval_related(kb, [(a, "noise-0")], k=3)  # a noise case is nobody's neighbour
    assert res["per_case"][a]["hits"] == 0
    with pytest.raises(KBEvalError, match="none of the known related pairs"):
        eval_related(kb, [("x", "y")], k=3)


def test_sample_ground_truth_is_complete_and_a_case_without_family_is_tolerated(tmp_path: Path) -> None:
    from knowledge_base.sample.catalog import CATALOG_JSON, load_catalog

    families, pairs = ground_truth()
    cat = load_catalog()
    zh_cases = json.loads((CATALOG_JSON.parent / "cases_zh.json").read_text("utf-8"))["cases"]
    assert set(families) == {c.id for c in cat.cases} | {c["id"] for c in zh_cases}, \
        "every shipped sample case (English and Chinese) has a fault family"
    en_family = {c.id: c.family for c in cat.cases}
    for c in zh_cases:  # a Chinese case shares the family of the English case it names ("like:<id>")
        assert c["family"].startswith("like:")
        assert families[c["id"]] == en_family[c["family"].removeprefix("like:")]
    assert len(set(families.values())) >= 10
    ids = {c.id for c in cat.cases}
    assert pairs and all(a in ids and b in ids and a != b for a, b in pairs)
    # the near-duplicate links of the sample are among the related pairs
    for c in cat.cases:
        for link in c.links:
            assert (c.id, link.case_id) in pairs or (link.case_id, c.id) in pairs
    # a catalog (e.g. another language's cases) where a case has no family and no related_pairs key still loads
    data = json.loads(CATALOG_JSON.read_text("utf-8"))
    del data["cases"][0]["family"]
    del data["related_pairs"]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(data), "utf-8")
    other = load_catalog(path)
    assert other.cases[0].family is None and other.related_pairs == []
    data["related_pairs"] = [["prn-lx4200-e204-tray2-jam", "no-such-case"]]
    path.write_text(json.dumps(data), "utf-8")
    with pytest.raises(ValueError, match="no-such-case"):
        load_catalog(path)


@pytest.mark.slow
def test_eval_kb_command_on_the_tiny_model(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from ui.cli import app

    monkeypatch.setenv("RAGVQA_EMBEDDER_MODEL", str(tiny_model_dir))
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["eval", "kb", "--models", "tiny", "--out", str(out), "--data-dir", str(tmp_path / "d"),
                                 "--k", "3"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    from knowledge_base.sample.catalog import CATALOG_JSON

    n_sample = sum(len(json.loads((CATALOG_JSON.parent / f).read_text("utf-8"))["cases"])
                   for f in ("cases.json", "cases_zh.json"))  # the English and the Chinese sample cases
    assert res["n_cases"] == n_sample and res["models"] == "tiny"
    for f in ("product_line", "equipment_model", "severity", "tags"):
        assert res["labels"][f]["n"] == n_sample
    assert 0.0 <= res["clusters"]["nmi"] <= 1.0 and res["clusters"]["n_cases"] == n_sample
    assert res["related"]["k"] == 3 and res["related"]["n_cases"] == len({c for p in ground_truth()[1] for c in p})
    md = (out / "report.md").read_text()
    assert "Mechanics only" in md
    for png in ("kb_eval.png", "kb_map.png"):
        assert (out / "plots" / png).stat().st_size > 0


@pytest.mark.slow
def test_bench_kb_runs_on_a_small_store(tmp_path: Path) -> None:
    from eval.bench_kb import render_markdown, run_kb_bench, write_report

    res = run_kb_bench([400], dim=64, n_queries=10, work_dir=tmp_path / "w", optimize=False)
    run = res["runs"][0]
    assert run["n_cases"] == 400 and run["points"] == 800
    for k in ("related_ms", "labels_ms", "assign_ms", "assign_case_ms"):
        assert run[k]["n"] == 10 and run[k]["p95"] >= run[k]["p50"] > 0
    c = run["clusters"]
    assert c["warm_read_from_store"] == 0 and c["peak_rss_mb"] > 0 and c["n_clusters"] >= 1
    assert res["goal"] is None  # no 100k run
    jpath, mpath = write_report(res, tmp_path / "out")
    assert json.loads(jpath.read_text())["runs"][0]["n_cases"] == 400
    assert "| 400 |" in mpath.read_text() and "| 400 |" in render_markdown(res)
