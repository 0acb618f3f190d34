"""Eval harness: metrics against hand-computed numbers, data loaders, and real runs on the sample KB (tiny models).

The runs go through the real pipeline, importer and Qdrant Edge store; only the pixel budgets are small so that
15 queries with reranking and answers fit in the test time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eval import metrics as M
from eval.data import EvalDataError, load_beir, load_jsonl, load_vidore
from eval.runner import RESULTS_FILE, EvalRunner, RunConfig, read_results, summarise

# -- ranking metrics, by hand -----------------------------------------------------------------------------------------
#: q1: relevant first (RR 1). q2: relevant second (RR 1/2). q3: graded, the grade-1 doc first, the grade-2 doc third.
HAND = [
    {"id": "q1", "relevant": {"d1": 1}, "retrieval": [["d1", 0.9], ["d3", 0.5]], "rerank": [["d1", 0.8], ["d3", 0.1]]},
    {"id": "q2", "relevant": {"d2": 1}, "retrieval": [["d3", 0.9], ["d2", 0.5]], "rerank": [["d2", 0.7], ["d3", 0.2]]},
    {"id": "q3", "relevant": {"d3": 2, "d4": 1}, "retrieval": [["d4", 0.9], ["d5", 0.8], ["d3", 0.7]],
     "rerank": [["d3", 0.9], ["d4", 0.6], ["d5", 0.1]]},
    {"id": "q4", "relevant": {}, "expect_abstain": True, "retrieval": [["d1", 0.2]], "rerank": [["d1", 0.05]]},
]


def test_two_query_run_gives_hand_computed_mrr() -> None:
    s = summarise([{k: v for k, v in r.items() if k != "rerank"} for r in HAND[:2]])
    m = s["metrics"]["retrieval"]
    assert m["mrr@10"] == pytest.approx(0.75)
    assert m["recall@1"] == pytest.approx(0.5) and m["hit_rate@1"] == pytest.approx(0.5)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert s["ablation"] is None and s["n_answerable"] == 2


def test_graded_run_matches_hand_numbers_and_ranx() -> None:
    import ranx

    s = summarise(HAND)
    assert s["n_queries"] == 4 and s["n_answerable"] == 3 and s["n_abstain"] == 1
    m = s["metrics"]["retrieval"]
    ndcg_q3 = (1 / math.log2(2) + 2 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))  # 2 / 2.6309 = 0.7602
    assert m["mrr@10"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["recall@1"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["hit_rate@1"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + ndcg_q3) / 3)
    qrels = ranx.Qrels({"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 2, "d4": 1}})
    run = ranx.Run({"q1": {"d1": 0.9, "d3": 0.5}, "q2": {"d3": 0.9, "d2": 0.5}, "q3": {"d4": 0.9, "d5": 0.8, "d3": 0.7}})
    assert ranx.evaluate(qrels, run, list(M.METRICS)) == pytest.approx(m)
    assert s["metrics"]["rerank"]["mrr@10"] == pytest.approx(1.0)
    assert s["recall_curve"]["retrieval"][1] == pytest.approx(m["recall@1"])


def test_rerank_ablation_significance_by_hand() -> None:
    s = summarise(HAND)
    row = s["ablation"]["against"]["rerank"]["mrr@10"]
    assert row["delta"] == pytest.approx(1 / 6)
    # per-query RR differences (0, 1/2, 0): t = mean / (sd / sqrt 3) = 1; two-sided p with 2 df = 1 - 1/sqrt(3)
    assert row["p_value"] == pytest.approx(1 - 1 / math.sqrt(3), abs=1e-6)
    assert not row["significant"] and (row["win"], row["tie"], row["loss"]) == (1, 2, 0)
    fisher = M.compare_runs(M.build_qrels(HAND), [M.build_run(HAND, "retrieval"), M.build_run(HAND, "rerank")],
                            metrics=["mrr@10"], stat_test="fisher")
    # every sign flip of (0, 1/2, 0) has the same |mean|: the randomisation test cannot reject
    assert fisher["against"]["rerank"]["mrr@10"]["p_value"] > 0.9


# -- abstention, answers ----------------------------------------------------------------------------------------------
def test_threshold_sweep_picks_f1_max_by_hand() -> None:
    scores = [0.10, 0.40, 0.30, 0.80, 0.35, 0.90]
    expect = [True, True, False, False, False, False]
    points, best = M.threshold_sweep(scores, expect)
    # abstain below 0.2 -> {0.10}: P 1, R 1/2, F1 2/3; below 0.6 -> {.1,.3,.35,.4}: P 1/2, R 1, F1 2/3 (tie:
    # the lower threshold wins, fewer abstentions); every other threshold has a lower F1.
    assert [round(p.threshold, 4) for p in points] == [0.1, 0.2, 0.325, 0.375, 0.6, 0.85, 0.9]
    assert best.threshold == pytest.approx(0.2)
    assert (best.precision, best.recall, best.f1) == pytest.approx((1.0, 0.5, 2 / 3))
    at = M.abstention_at(scores, expect, 0.6)
    assert (at.tp, at.fp, at.fn, at.tn) == (2, 2, 0, 2) and at.f1 == pytest.approx(2 / 3)
    assert M.abstention_at([None, 0.9], [True, False], 0.5).f1 == 1.0  # no candidate at all: abstains


def test_abstention_summary_uses_configured_thresholds() -> None:
    from rag.config import Settings

    s = summarise(HAND, settings=Settings(abstain_rerank_threshold=0.5, abstain_retrieval_threshold=0.3))
    a = s["abstention"]
    assert a["decision_kind"] == "rerank" and a["n_out_of_kb"] == 1
    assert a["rerank"]["configured"]["f1"] == 1.0 and a["retrieval"]["configured"]["f1"] == 1.0
    assert 0.05 < a["rerank"]["best"]["threshold"] <= 0.6


def test_answer_metrics() -> None:
    facts = ["pickup roller", "RK 4200 T2", "separation pad"]
    assert M.key_fact_recall("Replace the Pickup-Roller kit (RK-4200-T2).", facts) == pytest.approx(2 / 3)
    assert M.key_fact_recall("rollers", ["roller"]) == 0.0  # whole words only
    assert M.key_fact_recall("anything", []) is None
    assert M.citation_scores(["a", "x"], {"a": 2, "b": 1, "c": 2}) == (0.5, 0.5)
    assert M.citation_scores([], {"a": 2}) == (None, 0.0)
    assert M.parse_judge_score("Grade: 4/5") == 4 and M.parse_judge_score("none") is None


# -- data loaders ------------------------------------------------------------------------------------------------------
def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "eval.jsonl"
    p.write_text('{"id": "a", "kind": "text", "text": "x", "relevant": {"c": 2}}\n{"id": "b", "kind": "text", "text": "y"}\n')
    with pytest.raises(EvalDataError, match=r"eval.jsonl:2: .*relevant"):
        load_jsonl(p)
    p.write_text('{"id": "a", "kind": "image", "image": "missing.jpg", "relevant": {"c": 2}}\n')
    with pytest.raises(EvalDataError, match="media file not found"):
        load_jsonl(p)


def test_beir_folder(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "img" / "d2.png")
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "Pump", "text": "seal leak"}\n'
                                           '{"_id": "d2", "text": "", "image": "img/d2.png"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "leaking pump"}\n{"_id": "q2", "text": "red screen"}\n'
                                            '{"_id": "q3", "text": "not judged"}\n')
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td1\t0\n")
    es = load_beir(tmp_path)
    assert [it.id for it in es.items] == ["q1", "q2"]
    assert es.items[1].relevant == {"d2": 2}
    assert es.corpus is not None and es.corpus[1].image == tmp_path / "img" / "d2.png"
    assert es.items[0].to_query().text == "leaking pump"


def test_vidore_parquet_layout(tmp_path: Path) -> None:
    """ViDoRe's BEIR repos: corpus/queries/qrels parquet folders; the page image is the datasets Image struct."""
    import io

    import pandas as pd
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (50, 70), (10, 200, 10)).save(buf, format="PNG")
    for config in ("corpus", "queries", "qrels"):
        (tmp_path / config).mkdir()
    # fastparquet (installed with ranx) flattens the struct to "image.bytes", as it does when reading the hub files
    pd.DataFrame({"corpus-id": [7, 8], "image.bytes": [buf.getvalue(), buf.getvalue()]}).to_parquet(
        tmp_path / "corpus" / "test-00000-of-00001.parquet")
    pd.DataFrame({"query-id": [1, 2], "query": ["what is the total?", "unjudged"]}).to_parquet(
        tmp_path / "queries" / "test-00000-of-00001.parquet")
    pd.DataFrame({"query-id": [1], "corpus-id": [8], "score": [1]}).to_parquet(tmp_path / "qrels" / "test-00000-of-00001.parquet")
    es = load_vidore(tmp_path, tmp_path / "images")
    assert [it.id for it in es.items] == ["1"] and es.items[0].relevant == {"8": 1}
    assert es.corpus is not None and [d.id for d in es.corpus] == ["7", "8"]
    assert es.corpus[1].image is not None and Image.open(es.corpus[1].image).size == (50, 70)


# -- real runs on the sample KB -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_models(tiny_model_dir: Path):
    """The tiny checkpoint with small pixel budgets (the session fixtures keep the official ones)."""
    from rag.config import VisionBudget
    from rag.models.embedder import Embedder
    from rag.models.generator import Generator
    from rag.models.reranker import Reranker

    b = VisionBudget(max_pixels=16 * 1024, video_frame_max_pixels=8 * 1024, video_total_pixels=4 * 8 * 1024,
                     video_max_frames=4)
    kw = {"dtype": "float32", "device": "cpu", "budget": b}
    return (Embedder.from_pretrained(tiny_model_dir, **kw), Reranker.from_pretrained(tiny_model_dir, **kw),
            Generator.from_pretrained(tiny_model_dir, **kw))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evaldata")


def _settings(data_dir: Path):
    from rag.config import Settings

    return Settings(data_dir=data_dir, abstain_rerank_threshold=0.5, abstain_retrieval_threshold=0.35,
                    store_quantization=False)  # float stores throughout, so the sweep's full-dim point reuses one


def _cfg(mode: str) -> RunConfig:
    return RunConfig(mode=mode, limit=15, models="tiny", top_k=10, max_new_tokens=3, progress=False)


@pytest.fixture(scope="module")
def rag_run(small_models, data_dir: Path):
    emb, rr, gen = small_models
    cfg = _cfg("rag").model_copy(update={"judge": True})
    runner = EvalRunner(cfg, _settings(data_dir), embedder=emb, reranker=rr, generator=gen, run_dir=data_dir / "runs" / "rag")
    try:
        return runner.run()
    finally:
        runner.close()


def test_rag_run_on_sample_writes_reports(rag_run) -> None:
    out = rag_run
    files = {p.name for p in out.run_dir.rglob("*") if p.is_file()}
    assert {"results.json", "report.md", RESULTS_FILE, "config.json", "recall_at_k.png", "latency.png", "abstention.png"} <= files
    for png in (out.run_dir / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    s = json.loads((out.run_dir / "results.json").read_text())
    assert s["n_queries"] == 15 and s["n_abstain"] >= 1 and s["n_answerable"] >= 10 and not s["errors"]
    assert {"image", "text"} <= set(s["by_kind"])  # the eval set mixes photo and text queries
    for ranking in ("retrieval", "rerank"):
        assert all(0.0 <= v <= 1.0 for v in s["metrics"][ranking].values())
    assert set(s["ablation"]["against"]["rerank"]) == set(M.COMPARE_METRICS)
    assert {"embed", "search", "fetch", "rerank", "abstain", "total"} <= set(s["latency"])
    assert s["answers"]["n"] == s["n_answerable"] and 0 <= s["answers"]["answered_rate"] <= 1
    answered = [r for r in out.records if "answer" in r and not r["answer"]["abstained"] and not r["expect_abstain"]]
    assert answered and all(isinstance(r["answer_metrics"]["judge_reply"], str) for r in answered)  # the judge ran
    best = s["abstention"]["rerank"]["best"]
    assert best["f1"] == max(p["f1"] for p in s["abstention"]["rerank"]["curve"])
    md = (out.run_dir / "report.md").read_text()
    for heading in ("## Retrieval", "## Rerank ablation", "## Abstention", "## Answers", "## Latency"):
        assert heading in md
    assert "random-weight tiny models" in md
    recs = read_results(out.run_dir / RESULTS_FILE)
    assert len(recs) == 15 and all(len(r["retrieval"]) == 10 and len(r["rerank"]) == 10 for r in recs)
    assert all([x for _, x in r["rerank"]] == sorted((x for _, x in r["rerank"]), reverse=True) for r in recs)


def test_cached_rerun_skips_embedding_and_resumes(rag_run, small_models, data_dir: Path, monkeypatch) -> None:
    emb, _, _ = small_models
    calls: list[int] = []
    real_embed = emb.embed

    def counting(items, *a, **kw):
        items = list(items)
        calls.append(len(items))
        return real_embed(items, *a, **kw)

    monkeypatch.setattr(emb, "embed", counting)
    run_dir = data_dir / "runs" / "retrieval"
    runner = EvalRunner(_cfg("retrieval"), _settings(data_dir), embedder=emb, run_dir=run_dir, fresh_store=True)
    try:
        out = runner.run()
    finally:
        runner.close()
    assert calls == [], "a rebuilt store and the same queries must come from the embedding cache"
    cache = out.summary["run"]["cache"]
    assert cache["import"]["misses"] == 0 and cache["import"]["hits"] > 40 and cache["queries"]["hits"] == 15
    # cached vectors are the ones the first run computed: same retrieval rankings
    first = {r["id"]: [d for d, _ in r["retrieval"]] for r in rag_run.records}
    assert {r["id"]: [d for d, _ in r["retrieval"]] for r in out.records} == first
    assert out.summary["metrics"]["retrieval"] == pytest.approx(rag_run.summary["metrics"]["retrieval"])

    # resume: a torn last line is dropped, done queries are not run again
    with open(run_dir / RESULTS_FILE, "a") as f:
        f.write('{"id": "q-torn", "retri')
    runner = EvalRunner(_cfg("retrieval"), _settings(data_dir), embedder=emb, run_dir=run_dir)
    try:
        again = runner.run()
    finally:
        runner.close()
    assert again.summary["run"]["resumed"] == 15 and again.summary["run"]["ran"] == 0
    assert len((run_dir / RESULTS_FILE).read_text().splitlines()) == 15


def test_compare_cli(rag_run, data_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from eval.cli import eval_app

    res = CliRunner().invoke(eval_app, ["compare", str(data_dir / "runs" / "retrieval"), str(rag_run.run_dir),
                                        "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "`rag` against `retrieval`" in res.output and "paired t-test" in res.output
    assert "| MRR@10 |" in res.output and "latency: total p50 ms" in res.output
    cmp = json.loads((tmp_path / "compare.json").read_text())
    row = cmp["comparison"]["against"]["rag"]["recall@1"]
    assert row["delta"] == pytest.approx(rag_run.summary["metrics"]["rerank"]["recall@1"]
                                         - rag_run.summary["metrics"]["retrieval"]["recall@1"])
    assert row["p_value"] is None or 0.0 <= row["p_value"] <= 1.0  # None: every query tied
    bad = CliRunner().invoke(eval_app, ["compare", str(tmp_path / "nope"), str(rag_run.run_dir)])
    assert bad.exit_code == 2 and "no results.jsonl" in bad.output


def test_mrl_sweep_cuts_cached_vectors(rag_run, small_models, data_dir: Path, monkeypatch) -> None:
    """Dimensions below the full size are cuts of the cached full vectors: the sweep embeds nothing."""
    from eval.sweep import load_sweep, run_sweep

    emb, _, _ = small_models
    calls: list[int] = []
    real_embed = emb.embed
    monkeypatch.setattr(emb, "embed", lambda items, *a, **kw: calls.append(1) or real_embed(items, *a, **kw))
    out = data_dir / "sweep"
    res = run_sweep(_settings(data_dir), embedder=emb, out_dir=out, base=_cfg("retrieval"), dims=[64, emb.dim],
                    quantizations=(False,))
    assert calls == []
    assert [(p["dim"], p["quantization"]) for p in res["points"]] == [(64, False), (emb.dim, False)]
    small, full = res["points"]
    # the importer's near-duplicate check runs on these vectors, so the point count may differ by a few
    assert all(p["vector_ram_bytes"] == p["n_points"] * p["dim"] * 4 and p["n_points"] > 40 for p in res["points"])
    assert full["metrics"] == pytest.approx({m: rag_run.summary["metrics"]["retrieval"][m] for m in full["metrics"]})
    assert all(0 <= v <= 1 for p in res["points"] for v in p["metrics"].values()) and small["index_bytes"] > 0
    assert load_sweep(out)["dims"] == [64, emb.dim]
    assert (out / "mrl_sweep.png").read_bytes()[:4] == b"\x89PNG" and "| 64 | float32 |" in (out / "sweep.md").read_text()


def test_beir_corpus_run_through_the_pipeline(small_models, data_dir: Path, tmp_path: Path) -> None:
    """A benchmark corpus is indexed into its own store and scored like the KB: text docs and image-only pages."""
    from PIL import Image

    emb, rr, _ = small_models
    (tmp_path / "pages").mkdir()
    rows = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (64, 48), colour).save(tmp_path / "pages" / f"p{i}.png")
        rows.append({"_id": f"page{i}", "image": f"pages/p{i}.png"})
    rows += [{"_id": f"doc{i}", "title": t, "text": t * 3} for i, t in enumerate(["pump seal leak. ", "fuser error. "] * 5)]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "queries.jsonl").write_text('{"_id": "a", "text": "pump leaking"}\n{"_id": "b", "image": "pages/p1.png"}\n')
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\na\tdoc0\t1\nb\tpage1\t1\n")
    cfg = RunConfig(mode="rerank", data=tmp_path, models="tiny", top_k=10, progress=False)
    # an app configured for adaptive rerank depth: the eval still scores (and records) every retrieved case
    settings = _settings(data_dir).model_copy(update={"rerank_adaptive_margin": 0.0})
    runner = EvalRunner(cfg, settings, embedder=emb, reranker=rr, run_dir=tmp_path / "run")
    try:
        out = runner.run()
    finally:
        runner.close()
    recs = {r["id"]: r for r in out.records}
    assert not out.summary["errors"] and len(recs["a"]["retrieval"]) == 10 and len(recs["b"]["rerank"]) == 10
    assert recs["b"]["retrieval"][0][0] == "page1"  # the query image is that page: cosine 1
    assert {d for d, _ in recs["a"]["retrieval"]} <= {r["_id"] for r in rows}
    assert out.summary["metrics"]["retrieval"]["hit_rate@1"] >= 0.5  # query b at least


# -- the judge metric, by value ---------------------------------------------------------------------------------------
def _judge_grade(reply: str) -> int | None:
    """Reference reading of a judge reply, from the prompt's contract ("one digit from 1 to 5"): the first digit 1-5
    that is not part of a longer number."""
    digits = [(i, ch) for i, ch in enumerate(reply) if ch.isdigit()]
    for i, ch in digits:
        alone = not (i > 0 and reply[i - 1].isdigit()) and not (i + 1 < len(reply) and reply[i + 1].isdigit())
        if alone and ch in "12345":
            return int(ch)
    return None


class ScriptedJudge:
    """Stands in for the generator on the judge path only: fixed replies in order, and a record of what it was asked."""

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.calls = list(replies), []

    def generate(self, messages, **kw):
        self.calls.append((messages, kw))
        return self.replies.pop(0)


def test_judge_metric_value_from_scripted_replies(tmp_path: Path) -> None:
    """Scripted judge replies → the per-query grades and the run's judge mean, computed by hand.

    Asked: the four answered queries that have a reference answer. Not asked: an abstained answer, a query without a
    reference, an expect-abstain query. Replies "4", " 5/5", "Grade: 2" and "10" (no grade: ten is not a 1-5 grade)
    give grades 4, 5, 2, None; judge_mean = (4 + 5 + 2) / 3 = 11/3 over judged = 3.
    """
    from eval.data import EvalItem
    from eval.runner import answer_summary
    from knowledge_base.schema import EvalQuery
    from rag.pipeline.types import Answer

    def item(i: int, **kw) -> EvalItem:
        q = {"id": f"q{i}", "kind": "text", "text": f"question {i}", "relevant": {f"c{i}": 2},
             "reference_answer": f"reference {i}", **kw}
        return EvalItem(query=EvalQuery(**q), base=tmp_path)

    cases = [(item(1), Answer(text="answer 1", cases=[], cited=["c1"])),
             (item(2), Answer(text="answer 2", cases=[])),
             (item(3), Answer(text="answer 3", cases=[], abstained=True)),  # abstained: not judged
             (item(4), Answer(text="answer 4", cases=[])),
             (item(5, reference_answer=None), Answer(text="answer 5", cases=[])),  # nothing to compare with
             (item(6, relevant={}, expect_abstain=True, reference_answer=None), Answer(text="answer 6", cases=[])),
             (item(7), Answer(text="answer 7", cases=[]))]
    judge = ScriptedJudge(["4", " 5/5", "Grade: 2", "10"])
    runner = EvalRunner(_cfg("rag").model_copy(update={"judge": True}), _settings(tmp_path / "d"), embedder=object(),
                        generator=judge, run_dir=tmp_path / "run")
    records = []
    for it, ans in cases:
        records.append({"id": it.id, "expect_abstain": it.query.expect_abstain,
                        "answer": {"text": ans.text, "cited": ans.cited, "abstained": ans.abstained},
                        "answer_metrics": runner.answer_metrics(it, ans)})
    grades = {r["id"]: r["answer_metrics"].get("judge") for r in records}
    assert grades == {"q1": 4, "q2": 5, "q3": None, "q4": 2, "q5": None, "q6": None, "q7": None}
    asked = [m[1]["content"] for m, _ in judge.calls]
    assert len(asked) == 4 and not judge.replies
    for n, prompt in zip((1, 2, 4, 7), asked, strict=False):
        assert f"QUESTION:\nquestion {n}\n" in prompt and f"REFERENCE:\nreference {n}\n" in prompt
        assert f"ANSWER:\nanswer {n}\n" in prompt
    assert all(kw == {"max_new_tokens": 4, "temperature": 0.0} for _, kw in judge.calls)  # greedy: a reproducible grade
    s = answer_summary(records)
    assert s["judged"] == 3
    assert s["judge_mean"] == pytest.approx(11 / 3, abs=1e-12)


@pytest.mark.parametrize("reply, grade", [("4", 4), ("Grade: 4/5", 4), ("10", None), ("2024: 3", 3), ("0", None),
                                          ("none", None), (" 5", 5), ("6 then 1", 1)])
def test_judge_reply_parsing(reply: str, grade: int | None) -> None:
    assert _judge_grade(reply) == grade  # the reference agrees with the table
    assert M.parse_judge_score(reply) == grade


def test_rag_run_judge_mean_is_the_mean_of_its_replies(rag_run) -> None:
    """In the real run (tiny generator as its own judge) each query's grade is its reply read by the reference, and
    the summary's judge mean is the mean of those grades (not merely a number)."""
    answered = [r for r in rag_run.records if "answer" in r and not r["expect_abstain"] and not r["answer"]["abstained"]]
    grades = []
    for r in answered:
        m = r["answer_metrics"]
        assert m["judge"] == _judge_grade(m["judge_reply"]), m
        if m["judge"] is not None:
            grades.append(m["judge"])
    s = json.loads((rag_run.run_dir / "results.json").read_text())
    assert s["answers"]["judged"] == len(grades)
    if grades:
        assert s["answers"]["judge_mean"] == pytest.approx(sum(grades) / len(grades), abs=1e-12)
    else:
        assert s["answers"]["judge_mean"] is None


def test_sweep_int8_arm_searches_a_quantized_store(rag_run, small_models, data_dir: Path) -> None:
    """Both arms of the sweep run: the int8 arm's store really holds int8 vectors (read from the engine's own shard
    and segment configs), and its metrics are computed and close to the float arm's (rescored int8 search)."""
    from eval.sweep import SWEEP_METRICS, run_sweep

    emb, _, _ = small_models
    out = data_dir / "sweep-int8"
    res = run_sweep(_settings(data_dir), embedder=emb, out_dir=out, base=_cfg("retrieval"), dims=[emb.dim],
                    quantizations=(False, True))
    f32, i8 = res["points"]
    assert (f32["quantization"], i8["quantization"]) == (False, True)

    def engine(tag: str) -> tuple[str | None, int]:
        """(quantization type in the shard config, number of segments with built int8 vectors) of a point's store."""
        store_root = Path(json.loads((out / "points" / tag / "config.json").read_text())["store_dir"]) / "qdrant"
        shard = store_root / (store_root / "ACTIVE").read_text().strip() / "shard"
        qcfg = json.loads((shard / "edge_config.json").read_text()).get("quantization_config")
        built = 0
        for seg in (shard / "segments").iterdir():
            vd = json.loads((seg / "segment.json").read_text())["config"]["vector_data"]["dense"]
            if (vd.get("quantization_config") or {}).get("scalar", {}).get("type") == "int8":
                built += (seg / "vector_storage-dense" / "quantized.data").is_file()
        return (None if qcfg is None else qcfg["scalar"]["type"]), built

    assert engine(f"d{emb.dim}-int8")[0] == "int8" and engine(f"d{emb.dim}-int8")[1] >= 1
    assert engine(f"d{emb.dim}-float32") == (None, 0)
    assert i8["n_points"] == f32["n_points"] > 40
    assert all(i8["metrics"][m] is not None and 0 <= i8["metrics"][m] <= 1 for m in SWEEP_METRICS)
    # rescoring with 2x oversampling: on 15 queries the int8 ranking may swap a near tie, no more
    for m in SWEEP_METRICS:
        assert abs(i8["metrics"][m] - f32["metrics"][m]) <= 0.07, (m, i8["metrics"], f32["metrics"])
    # the rescored scores are float cosines: a case both arms rank first has the same score (1e-5)
    recs = {tag: {r["id"]: r for r in read_results(out / "points" / tag / RESULTS_FILE)}
            for tag in (f"d{emb.dim}-float32", f"d{emb.dim}-int8")}
    a, b = recs[f"d{emb.dim}-float32"], recs[f"d{emb.dim}-int8"]
    assert set(a) == set(b) and len(a) == 15
    same_top = [q for q in a if a[q]["retrieval"][0][0] == b[q]["retrieval"][0][0]]
    assert len(same_top) >= 13
    for q in same_top:
        assert b[q]["retrieval"][0][1] == pytest.approx(a[q]["retrieval"][0][1], abs=1e-5)


def test_bench_ingest_refuses_a_ratio_when_dedup_did_less_work(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two of four cases carry byte copies of case 0's photo: the import links them instead of embedding, so it does
    6 items of work where the raw arm does 8. The bench must see that and print no ratio; without duplicates it
    reports one, with equal work on both sides."""
    from eval.bench_ingest import run_ingest_bench, to_markdown

    kw = {"n_cases": 4, "images_per_case": 1, "image_size": (96, 72), "repeats": 1}
    res = run_ingest_bench(tiny_model_dir, duplicate_cases=2, work_dir=tmp_path / "dup", **kw)
    assert res["ratio"] is None and res["cpu"]["ratio"] is None and res["meets_goal"] is None, res
    # the test's own accounting of its dataset: 4 case texts + 4 photos; 2 photos are exact copies of another case's
    assert res["work"] == {"raw_embedded": 8, "import_embedded": [6], "import_written": [6]}
    assert "no ratio" in res["ratio_refused"] and "embedded 8 items" in res["ratio_refused"]
    md = to_markdown(res)
    assert "no ratio: the arms did different work" in md and "% of the raw embedder" not in md

    clean = run_ingest_bench(tiny_model_dir, work_dir=tmp_path / "clean", **kw)
    assert clean["work"] == {"raw_embedded": 8, "import_embedded": [8], "import_written": [8]}
    assert clean["ratio_refused"] is None and clean["ratio"] > 0 and "% of the raw embedder" in to_markdown(clean)
