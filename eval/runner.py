"""Scripted evaluation runs through the real pipeline: retrieval, retrieval + rerank, or the whole RAG answer.

A run lives in a folder: ``config.json`` (what was run), ``results.jsonl`` (one line per query, appended as queries
finish, so an interrupted run continues where it stopped) and the reports. The knowledge base is imported into an
eval store of its own under ``data_dir/eval/stores/`` (never the app's store; shared by runs over the same KB,
embedder, dimension and quantization), through the knowledge-base importer (sample KB by default), or a benchmark
corpus is indexed into it (:mod:`eval.index`). Embeddings go through :class:`eval.cache.CachedEmbedder`, so a
rerun, another mode, a rebuilt store or a sweep does not embed anything twice.

The pipeline is built with :meth:`RagPipeline.from_components` and run through its own ``retrieval``/``stream``;
both hand back the query's :class:`~rag.pipeline.types.Retrieval` (the full top-k retrieved, every case the
reranker scored, the top-n kept), so one pass yields the retrieval-only ranking, the reranked ranking and the answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

from pydantic import BaseModel, Field

from eval import metrics as M
from eval.cache import CachedEmbedder, EmbeddingCache
from eval.data import EvalItem, EvalSet, load_eval_set, load_jsonl
from rag.config import Settings
from rag.errors import RagvqaError
from rag.i18n import detect_lang
from rag.models.protocols import EmbeddingModel, GenerationModel, RerankingModel
from rag.pipeline import RagPipeline, Trace
from rag.pipeline.types import Retrieval

if TYPE_CHECKING:
    from knowledge_base.kb import KnowledgeBase

logger = logging.getLogger(__name__)

Mode = Literal["retrieval", "rerank", "rag"]
MODES: tuple[str, ...] = ("retrieval", "rerank", "rag")
RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.json"
#: Query instruction for benchmark corpora (the app's own instruction talks about faulty equipment).
GENERIC_INSTRUCTION = "Retrieve images or text relevant to the user's query."


class EvalError(RagvqaError, RuntimeError):
    """An eval run that cannot start or continue; the message says what to do."""

    code = "eval_failed"


class RunConfig(BaseModel):
    """What a run evaluates. Everything that changes results is in :meth:`fingerprint`."""

    mode: Mode = "rerank"
    #: Eval .jsonl, BEIR folder or ViDoRe folder; None = the sample knowledge base's eval set.
    data: Path | None = None
    data_format: Literal["auto", "jsonl", "beir", "vidore"] = "auto"
    split: str = "test"
    language: str | None = None
    #: Cases JSONL imported as the KB for a custom .jsonl eval set (None with ``data`` None: the sample's).
    cases: Path | None = None
    limit: int | None = Field(default=None, ge=1)
    models: Literal["real", "tiny"] = "real"
    top_k: int = Field(default=20, ge=10, description="retrieved cases per query (metrics go to @10)")
    top_n: int = Field(default=5, ge=1)
    embed_dim: int | None = None
    #: int8 scalar quantization of the eval store; None = as configured (``RAGVQA_STORE_QUANTIZATION``).
    quantization: bool | None = None
    instruction: str | None = None
    max_new_tokens: int = 256
    #: rag mode only: answer from the retrieval top-n without reranking (ablation of the answer side).
    rerank: bool = True
    judge: bool = False
    progress: bool = True

    def fingerprint(self, eval_fp: str, model_id: str, settings: Settings) -> str:
        """Hash of everything that changes per-query results (not ``limit``/``progress``: they only pick queries)."""
        keep = self.model_dump(mode="json", exclude={"limit", "progress"})
        keep.update(eval=eval_fp, model=model_id, quantization=bool(settings.store_quantization if self.quantization is None
                                                                    else self.quantization),
                    rerank_threshold=settings.abstain_rerank_threshold,
                    retrieval_threshold=settings.abstain_retrieval_threshold, temperature=settings.temperature,
                    rerank_model=settings.reranker_model if self.models == "real" else "tiny",
                    generator_model=settings.generator_model if self.models == "real" else "tiny")
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunOutput:
    """Where a run wrote its files and what it measured."""

    run_dir: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)


# -- knowledge base / corpus ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleFiles:
    """The two files of a built sample KB that an eval needs."""

    root: Path
    cases_jsonl: Path
    eval_jsonl: Path


def sample_eval_set(data_dir: Path) -> tuple[SampleFiles, EvalSet]:
    """The sample KB under ``data_dir/sample`` and its eval set, built on first use.

    An existing build is reused (rendering takes seconds); delete the folder to rebuild it after the generator changed.
    """
    root = Path(data_dir) / "sample"
    files = SampleFiles(root, root / "cases.jsonl", root / "eval.jsonl")
    if not (files.cases_jsonl.is_file() and files.eval_jsonl.is_file() and (root / "manifest.json").is_file()):
        from knowledge_base.sample import build_sample_kb

        logger.info("building the sample knowledge base in %s", root)
        built = build_sample_kb(root)
        files = SampleFiles(Path(built.root), Path(built.cases_jsonl), Path(built.eval_jsonl))
    es = load_jsonl(files.eval_jsonl)
    es.name = "sample"
    return files, es


def open_kb(settings: Settings, embedder: EmbeddingModel) -> KnowledgeBase:
    """The knowledge-base facade (``knowledge_base.kb.KnowledgeBase``) on ``settings.data_dir``."""
    from knowledge_base.kb import KnowledgeBase

    return KnowledgeBase.open(settings, embedder)


def import_cases(kb: Any, cases_jsonl: Path, *, progress: bool = False) -> Any:
    """Import a cases JSONL (media paths relative to it) with the KB's own importer (resumable, skips unchanged)."""
    return kb.import_path(cases_jsonl, progress=progress)


def kb_store(kb: Any) -> Any:
    store = getattr(kb, "store", None)
    if store is None:
        raise EvalError(f"{type(kb).__name__} exposes no .store")
    return store


def dir_size(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (like ``du``): Qdrant preallocates sparse 32 MB mmap/WAL files, so
    apparent sizes would say the same for every index."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(dirpath, f))
            except OSError:
                continue
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


# -- the runner ------------------------------------------------------------------------------------------------------
class EvalRunner:
    """One eval run in ``run_dir``; models are passed in (the CLI loads them, tests pass the tiny ones)."""

    def __init__(self, cfg: RunConfig, settings: Settings, *, embedder: EmbeddingModel,
                 reranker: RerankingModel | None = None, generator: GenerationModel | None = None, run_dir: Path, cache: EmbeddingCache | None = None,
                 restart: bool = False, fresh_store: bool = False, optimize_store: bool = False,
                 write_report: bool = True, stat_test: str = "student", max_p: float = 0.05) -> None:
        if cfg.mode in ("rerank",) and reranker is None:
            raise EvalError("mode 'rerank' needs a reranker")
        if cfg.mode == "rag" and generator is None:
            raise EvalError("mode 'rag' needs a generator")
        self.cfg, self.settings = cfg, settings
        self.run_dir = Path(run_dir)
        self.data_dir = Path(settings.data_dir)
        self.cache = cache or EmbeddingCache(self.data_dir / "cache" / "embeddings.sqlite3")
        self.embedder = embedder if isinstance(embedder, CachedEmbedder) else CachedEmbedder(embedder, self.cache)
        self.reranker, self.generator = reranker, generator
        self.restart, self.fresh_store = restart, fresh_store
        self.optimize_store, self.write_report = optimize_store, write_report
        self.stat_test, self.max_p = stat_test, max_p
        self.store: Any = None
        self.kb: Any = None
        self.pipeline: RagPipeline | None = None
        self.eval_set: EvalSet | None = None
        self.sample: SampleFiles | None = None
        self.cases_jsonl: Path | None = None
        self.media_root: Path | None = None
        self.import_stats: dict[str, int] = {}
        self.query_stats: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self._case_langs: dict[str, str] | None = None

    # -- setup ---------------------------------------------------------------------------------------------------
    def load_data(self) -> EvalSet:
        cfg = self.cfg
        if cfg.data is None:
            self.sample, es = sample_eval_set(self.data_dir)
            self.cases_jsonl = self.sample.cases_jsonl
        else:
            self.sample = None
            es = load_eval_set(cfg.data, fmt=cfg.data_format, split=cfg.split, language=cfg.language,
                               images_dir=self.data_dir / "cache" / "benchmarks" / Path(cfg.data).name / "images")
            self.cases_jsonl = cfg.cases
            if es.corpus is None and cfg.cases is None:
                raise EvalError(f"{cfg.data} refers to knowledge-base cases: give --cases CASES.jsonl to import as the KB")
        self.full_eval_set = es
        self.eval_set = es.subset(cfg.limit) if cfg.limit else es
        return self.eval_set

    def store_key(self) -> str:
        """What the eval store's content depends on: the KB/corpus, the embedder, the dimension, the quantization."""
        es = self.full_eval_set
        if es.corpus is not None:
            content = f"corpus:{es.fingerprint}:{len(es.corpus)}"  # documents use the default instruction
        else:
            h = hashlib.sha256()
            with open(self.cases_jsonl, "rb") as f:  # type: ignore[arg-type]
                h.update(f.read())
            content = f"cases:{h.hexdigest()}"
        raw = f"{content}|{self.embedder.model_id}|{self.cfg.embed_dim}|{self.quantization}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def store_dir(self) -> Path:
        """The eval's own store (never the app's): shared by runs over the same KB, embedder, dim and quantization,
        so a retrieval run after a rerank run does not import the KB again."""
        return self.data_dir / "eval" / "stores" / f"{self.full_eval_set.name}-{self.store_key()}"

    def kb_settings(self) -> Settings:
        """Settings of the eval store (an Edge store under :attr:`store_dir`) and of the pipeline on it."""
        return self.settings.model_copy(update={
            "data_dir": self.store_dir, "qdrant_url": None, "embed_dim": self.cfg.embed_dim,
            "store_quantization": self.quantization, "retrieve_top_k": self.cfg.top_k,
            "rerank_top_n": self.cfg.top_n, "max_new_tokens": self.cfg.max_new_tokens,
            "rerank_enabled": self.uses_rerank,
            # every retrieved case is reranked, so the run records the full reranked list (the adaptive depth is
            # studied offline from it: `ragvqa bench rerank-depth`)
            "rerank_adaptive_margin": None,
        })

    @property
    def quantization(self) -> bool:
        q = self.cfg.quantization
        return bool(self.settings.store_quantization if q is None else q)

    @property
    def uses_rerank(self) -> bool:
        return self.cfg.mode == "rerank" or (self.cfg.mode == "rag" and self.cfg.rerank and self.reranker is not None)

    def open_store(self) -> Any:
        """Import the KB (or index the corpus) into the run's store; cheap on reruns (importer skips, cache hits)."""
        assert self.eval_set is not None
        s = self.kb_settings()
        if self.fresh_store and self.store_dir.exists():
            logger.info("removing the eval store %s (fresh store asked)", self.store_dir)
            shutil.rmtree(self.store_dir)
        before = dict(self.embedder.stats)
        t0 = time.perf_counter()
        if self.eval_set.corpus is not None:
            from eval.index import corpus_media_root, index_corpus
            from rag.store import open_store

            dim = self.cfg.embed_dim or int(self.embedder.dim)
            self.store = open_store(embedder_id=self.embedder.model_id, dim=dim, config=s.store_config())
            self.media_root = corpus_media_root(self.eval_set.corpus)
            index_corpus(self.store, self.embedder, self.eval_set.corpus, media_root=self.media_root,
                         progress=self.cfg.progress, batch_size=s.embed_batch_size)
        else:
            self.kb = open_kb(s, self.embedder)
            result = import_cases(self.kb, Path(self.cases_jsonl), progress=self.cfg.progress)  # type: ignore[arg-type]
            logger.info("knowledge base imported into %s: %s", s.data_dir, result.summary())
            if result.rejected:
                logger.warning("%d cases were rejected by the importer; queries citing them cannot be found", result.rejected)
            self.store = kb_store(self.kb)
            self.media_root = Path(self.kb.media_root)
        if self.optimize_store:
            self.store.optimize()  # build HNSW / int8 indexes now, so searches and sizes are those of a built index
        self.timings["import_s"] = time.perf_counter() - t0
        self.import_stats = {k: self.embedder.stats[k] - before.get(k, 0) for k in self.embedder.stats}
        return self.store

    def build_pipeline(self) -> RagPipeline:
        s = self.kb_settings()
        instruction = self.cfg.instruction or (GENERIC_INSTRUCTION if self.eval_set and self.eval_set.corpus is not None else None)
        p = RagPipeline.from_components(embedder=self.embedder, reranker=self.reranker if self.uses_rerank else None,
                                        generator=self.generator, store=self.store, settings=s, media_root=self.media_root,
                                        retrieve_instruction=instruction)
        self.pipeline = p
        return p

    # -- run folder ------------------------------------------------------------------------------------------------
    def _prepare_dir(self, fingerprint: str) -> list[dict[str, Any]]:
        """Check/create ``config.json``; return the records of earlier runs in this folder (resume)."""
        cfg_path, res_path = self.run_dir / CONFIG_FILE, self.run_dir / RESULTS_FILE
        if self.restart and self.run_dir.exists():
            for name in (RESULTS_FILE, CONFIG_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text("utf-8"))
            if old.get("fingerprint") != fingerprint:
                raise EvalError(f"{self.run_dir} holds a run with other settings (mode/data/models/thresholds); "
                                "use another --out or --restart to discard it")
        payload = {"fingerprint": fingerprint, "config": self.cfg.model_dump(mode="json"),
                   "settings": {k: v for k, v in self.kb_settings().model_dump(mode="json").items() if k != "qdrant_api_key"},
                   "models": {"embedder": self.embedder.model_id, "kind": self.cfg.models},
                   "store_dir": str(self.store_dir)}
        tmp = cfg_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", "utf-8")
        tmp.replace(cfg_path)
        return read_results(res_path)

    # -- languages -----------------------------------------------------------------------------------------------
    @property
    def case_langs(self) -> dict[str, str]:
        """Case id -> the language its text is written in (read once from the KB's cases.jsonl)."""
        if self._case_langs is None:
            self._case_langs = case_languages(self.cases_jsonl) if self.cases_jsonl is not None else {}
        return self._case_langs

    def languages(self, item: EvalItem) -> dict[str, str]:
        """The query's language (``none``: no text) and the language of its best relevant case (``none``: out of KB)."""
        best = max(item.relevant.items(), key=lambda kv: kv[1], default=None)
        return {"query_lang": detect_lang(item.query.text or "") or "none",
                "case_lang": self.case_langs.get(best[0], "?") if best else "none"}

    # -- one query -------------------------------------------------------------------------------------------------
    def run_query(self, item: EvalItem) -> dict[str, Any]:
        p = self.pipeline
        assert p is not None
        cfg = self.cfg
        q = item.to_query(rerank=self.uses_rerank)
        rec: dict[str, Any] = {"id": item.id, "kind": item.query.kind, "variant": item.query.variant,
                               "expect_abstain": item.query.expect_abstain, "relevant": item.relevant, "error": None,
                               **self.languages(item)}
        t0 = time.perf_counter()
        answer = None
        retrieval: Retrieval | None = None
        try:
            if cfg.mode == "rag":
                for event in p.stream(q):
                    if event.type == "sources":
                        retrieval = event.retrieval
                    elif event.type == "done":
                        answer = event.answer
                assert answer is not None and retrieval is not None
                trace, decision = answer.trace, answer.decision
            else:
                trace = Trace()
                retrieval = p.retrieval(q, trace)
                decision = p.abstain_stage.run(retrieval.kept, retrieval.reranked, trace)
        except Exception as e:  # noqa: BLE001 - one bad query must not sink a long run; it is reported and scored as a miss
            logger.warning("query %s failed: %s: %s", item.id, type(e).__name__, e)
            rec.update(error=f"{type(e).__name__}: {e}", retrieval=[], rerank=None, decision=None, latency_ms={},
                       best_retrieval=None, best_rerank=None)
            return rec
        wall = (time.perf_counter() - t0) * 1000
        assert retrieval is not None
        rec["retrieval"] = [[c.case_id, round(float(c.retrieval_score), 6)] for c in retrieval.retrieved]
        rec["rerank"] = ([[c.case_id, round(float(c.rerank_score or 0.0), 6)] for c in retrieval.scored]
                         if retrieval.scored is not None else None)
        rec["best_retrieval"] = max((s for _, s in rec["retrieval"]), default=None)
        rec["best_rerank"] = max((s for _, s in rec["rerank"]), default=None) if rec["rerank"] is not None else None
        rec["decision"] = decision.model_dump() if decision is not None else None
        lat = {s.stage: 0.0 for s in trace.stages if s.stage != "total"}
        for s in trace.stages:
            if s.stage != "total":
                lat[s.stage] += s.ms
            if s.stage == "generate" and s.detail.get("first_token_ms") is not None:
                lat["first_token"] = float(s.detail["first_token_ms"])
        lat["total"] = wall
        rec["latency_ms"] = {k: round(v, 3) for k, v in lat.items()}
        if answer is not None:
            rec["answer"] = {"text": answer.text, "cited": answer.cited, "abstained": answer.abstained,
                             "context": [c.case_id for c in answer.cases]}
            rec["answer_metrics"] = self.answer_metrics(item, answer)
        return rec

    def answer_metrics(self, item: EvalItem, answer: Any) -> dict[str, Any]:
        """Citations and key facts; an abstention on an answerable query scores 0 (the user got no answer)."""
        q = item.query
        if q.expect_abstain:
            return {"citation_precision": None, "citation_recall": None, "key_fact_recall": None, "judge": None}
        prec, rec = M.citation_scores(answer.cited, item.relevant)
        kfr = M.key_fact_recall(answer.text, q.key_facts)
        if answer.abstained:
            kfr = 0.0 if q.key_facts else None
            rec = 0.0 if rec is not None else None
        judge, reply = None, None
        if self.cfg.judge and not answer.abstained and q.reference_answer and self.generator is not None:
            reply = self.generator.generate(M.judge_messages(q.text or "", q.reference_answer, answer.text),
                                            max_new_tokens=4, temperature=0.0)
            judge = M.parse_judge_score(reply)
        return {"citation_precision": prec, "citation_recall": rec, "key_fact_recall": kfr, "judge": judge,
                "judge_reply": reply}

    # -- the run -----------------------------------------------------------------------------------------------------
    def run(self) -> RunOutput:
        t_start = time.perf_counter()
        es = self.load_data()
        self.timings["load_data_s"] = time.perf_counter() - t_start
        fp = self.cfg.fingerprint(self.full_eval_set.fingerprint, self.embedder.model_id, self.settings)
        done = self._prepare_dir(fp)
        done_ids = {r["id"] for r in done}
        todo = [it for it in es.items if it.id not in done_ids]
        if done:
            logger.info("resuming %s: %d of %d queries already done", self.run_dir, len(es) - len(todo), len(es))
        self.open_store()
        self.build_pipeline()
        before = dict(self.embedder.stats)
        t0 = time.perf_counter()
        with open(self.run_dir / RESULTS_FILE, "a", encoding="utf-8") as out:
            for item in _progress(todo, self.cfg.progress, f"eval {self.cfg.mode}"):
                rec = self.run_query(item)
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                out.flush()
                done.append(rec)
        self.timings["queries_s"] = time.perf_counter() - t0
        self.query_stats = {k: self.embedder.stats[k] - before.get(k, 0) for k in self.embedder.stats}
        wanted = {it.id for it in es.items}
        records = [r for r in done if r["id"] in wanted]
        t0 = time.perf_counter()
        summary = summarise(records, self.cfg, self.kb_settings(), stat_test=self.stat_test, max_p=self.max_p)
        self.timings["metrics_s"] = time.perf_counter() - t0
        summary["run"] = {
            "dir": str(self.run_dir), "store_dir": str(self.store_dir), "eval_set": es.name, "source": es.source, "resumed": len(done_ids & wanted),
            "ran": len(todo), "models": self.cfg.models, "embedder": self.embedder.model_id,
            "embedder_name": str(getattr(self.embedder, "name", "")),
            "cache": {"import": self.import_stats, "queries": self.query_stats, "entries": len(self.cache)},
            "timings_s": {k: round(v, 3) for k, v in {**self.timings, "total_s": time.perf_counter() - t_start}.items()},
        }
        files: dict[str, Path] = {}
        if self.write_report:
            from eval.report import write_run_report

            files = write_run_report(summary, records, self.run_dir)
        return RunOutput(self.run_dir, summary, records, files)

    def close(self) -> None:
        """Close what this run opened: the knowledge base (``self.store`` is its store, closed with it) or, for a
        corpus indexed without one, the bare store. A failure to close is logged, never raised."""
        owner = self.kb if self.kb is not None else self.store
        if owner is not None:
            try:
                owner.close()
            except Exception:
                logger.warning("error while closing %s", type(owner).__name__, exc_info=True)
        self.kb = self.store = None


def _progress(items: Sequence[Any], enabled: bool, desc: str) -> Iterator[Any]:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit="query")


def read_results(path: Path) -> list[dict[str, Any]]:
    """Records of ``results.jsonl``; a torn last line (killed mid-write) is dropped and cut off the file."""
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    good_bytes = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                logger.warning("%s: dropping a partly written line (the run was interrupted)", path)
                break
            records.append(rec)
            good_bytes += len(raw)
    if good_bytes < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    # a query may appear twice if a run was interrupted between write and flush; keep the last
    by_id = {r["id"]: r for r in records}
    return list(by_id.values())


# -- metrics of a run ----------------------------------------------------------------------------------------------
def summarise(records: Sequence[dict[str, Any]], cfg: RunConfig | None = None, settings: Settings | None = None,
              stat_test: str = "student", max_p: float = 0.05) -> dict[str, Any]:
    """All numbers of a run from its per-query records (pure: tests feed it hand-made records)."""
    answerable = [r for r in records if r.get("relevant")]
    out: dict[str, Any] = {
        "mode": cfg.mode if cfg else None,
        "n_queries": len(records), "n_answerable": len(answerable),
        "n_abstain": sum(1 for r in records if r.get("expect_abstain")),
        "errors": [{"id": r["id"], "error": r["error"]} for r in records if r.get("error")],
        "metrics": {}, "by_kind": {}, "by_lang": {}, "recall_curve": {}, "ablation": None,
    }
    has_rerank = any(r.get("rerank") is not None for r in records)
    rankings = ["retrieval", "rerank"] if has_rerank else ["retrieval"]
    if answerable:
        qrels = M.build_qrels(answerable)
        runs = {w: M.build_run(answerable, w, name=w) for w in rankings}
        max_k = max([10] + [len(r.get("retrieval") or []) for r in answerable])
        for w, run in runs.items():
            out["metrics"][w] = M.evaluate(qrels, run)
            out["recall_curve"][w] = M.recall_curve(qrels, run, min(max_k, cfg.top_k if cfg else max_k))
        kinds = sorted({r.get("kind") or "?" for r in answerable})
        for kind in kinds:
            sub = [r for r in answerable if (r.get("kind") or "?") == kind]
            kq = M.build_qrels(sub)
            out["by_kind"][kind] = {"n": len(sub), **{w: M.evaluate(kq, M.build_run(sub, w, name=w)) for w in rankings}}
        out["by_lang"] = by_language(answerable, rankings)
        if has_rerank and len(answerable) >= 2:
            out["ablation"] = M.compare_runs(qrels, [runs["retrieval"], runs["rerank"]], stat_test=stat_test, max_p=max_p)
    out["abstention"] = abstention_summary(records, settings, has_rerank)
    if any("answer" in r for r in records):
        out["answers"] = answer_summary(records)
    out["latency"] = M.latency_summary([r for r in records if not r.get("error")])
    return out


def case_languages(cases_jsonl: Path) -> dict[str, str]:
    """Case id -> language of its title and symptom (:func:`rag.i18n.detect_lang`; ``?`` when it cannot tell)."""
    out: dict[str, str] = {}
    with open(cases_jsonl, encoding="utf-8-sig") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[str(row["id"])] = detect_lang(f"{row.get('title', '')} {row.get('symptom', '')}") or "?"
            except (ValueError, KeyError, TypeError):
                continue
    return out


def by_language(answerable: Sequence[dict[str, Any]], rankings: Sequence[str]) -> dict[str, Any]:
    """Retrieval metrics per query language, per case language and per (query → case) language pair; records
    written before languages were recorded count as ``?``."""
    out: dict[str, Any] = {}
    groups = {
        "query": lambda r: r.get("query_lang") or "?",
        "case": lambda r: r.get("case_lang") or "?",
        "pair": lambda r: f"{r.get('query_lang') or '?'} → {r.get('case_lang') or '?'}",
    }
    for name, key in groups.items():
        table: dict[str, Any] = {}
        for lang in sorted({key(r) for r in answerable}):
            sub = [r for r in answerable if key(r) == lang]
            kq = M.build_qrels(sub)
            table[lang] = {"n": len(sub), **{w: M.evaluate(kq, M.build_run(sub, w, name=w)) for w in rankings}}
        out[name] = table
    return out


def abstention_summary(records: Sequence[dict[str, Any]], settings: Settings | None, has_rerank: bool) -> dict[str, Any] | None:
    """Abstention P/R/F1 at the configured threshold and the F1-best threshold, per score kind."""
    expect = [bool(r.get("expect_abstain")) for r in records]
    if not any(expect) or all(expect):
        return None
    out: dict[str, Any] = {"n_out_of_kb": sum(expect), "n_in_kb": len(expect) - sum(expect)}
    kinds = ["rerank"] if has_rerank else []
    kinds.append("retrieval")
    for kind in kinds:
        scores = [max((s for _, s in r.get(kind) or []), default=None) for r in records]
        configured = None
        if settings is not None:
            configured = settings.abstain_rerank_threshold if kind == "rerank" else settings.abstain_retrieval_threshold
        points, best = M.threshold_sweep(scores, expect)
        out[kind] = {
            "configured": M.abstention_at(scores, expect, configured).to_dict() if configured is not None else None,
            "best": best.to_dict(),
            "curve": [p.to_dict() for p in points],
        }
    out["decision_kind"] = kinds[0]
    return out


def answer_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ans = [r for r in records if "answer" in r and not r.get("expect_abstain")]
    am = [r.get("answer_metrics") or {} for r in ans]
    return {
        "n": len(ans),
        "answered_rate": (sum(1 for r in ans if not r["answer"]["abstained"]) / len(ans)) if ans else None,
        "citation_precision": M.mean_of(m.get("citation_precision") for m in am),
        "citation_recall": M.mean_of(m.get("citation_recall") for m in am),
        "key_fact_recall": M.mean_of(m.get("key_fact_recall") for m in am),
        "judge_mean": M.mean_of(m.get("judge") for m in am),
        "judged": sum(1 for m in am if m.get("judge") is not None),
        "cited_any_rate": (sum(1 for r in ans if r["answer"]["cited"]) / len(ans)) if ans else None,
    }
