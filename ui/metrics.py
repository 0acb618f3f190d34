"""Prometheus metrics and the one-line-per-answer log of the served app.

Off by default: ``RAGVQA_METRICS_PORT`` starts ``prometheus_client``'s HTTP server on its own port (address
``RAGVQA_METRICS_HOST``, default the interface the app listens on), never on the public app. Metrics (``ragvqa_`` prefix):

* ``answers_total{outcome}`` (answered | abstained | error), ``answer_stage_seconds{stage}`` histograms for
  embed, search, rerank, first_token (from the start of generation) and total (whole request);
* ``abstention_ratio`` (abstained / answered+abstained since start), ``feedback_total{rating}`` (up | down);
* ``queue_depth`` (requests waiting in Gradio's queue), ``answers_in_progress``, ``kb_cases``.

Labels hold only these fixed words: never question text, media or case ids. The same observer writes one log line
per answer (logger ``ragvqa.answers``): stage timings and case ids, the question only with
``RAGVQA_LOG_QUESTIONS=1``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from rag.pipeline.types import Answer
    from ui.services import Services

logger = logging.getLogger(__name__)
answer_log = logging.getLogger("ragvqa.answers")

__all__ = ["AppMetrics", "STAGES", "log_answer"]

STAGES = ("embed", "search", "rerank", "first_token", "total")
#: Seconds: from a few ms (tiny models, GPU) to minutes (2B models on a CPU).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def stage_seconds(answer: Answer) -> dict[str, float]:
    """Per-stage seconds of one answer from its trace (first_token from the generate stage's detail)."""
    out: dict[str, float] = {}
    for st in answer.trace.stages:
        if st.stage in ("embed", "search", "rerank"):
            out[st.stage] = out.get(st.stage, 0.0) + st.ms / 1000
        elif st.stage == "generate" and st.detail.get("first_token_ms") is not None:
            out["first_token"] = float(st.detail["first_token_ms"]) / 1000
    return out


def log_answer(answer: Answer | None, total_s: float, question: str, outcome: str) -> None:
    """The one line per answer: outcome, stage timings (ms), case ids; the question only if enabled."""
    extra: dict[str, Any] = {"outcome": outcome, "total_ms": round(total_s * 1000, 1)}
    if answer is not None:
        extra["stages_ms"] = {k: round(v * 1000, 1) for k, v in stage_seconds(answer).items()}
        extra["cases"] = [c.case_id for c in answer.cases]
        extra["cited"] = list(answer.cited)
    if _flag("RAGVQA_LOG_QUESTIONS"):
        extra["question"] = question
    stages = " ".join(f"{k}={v}ms" for k, v in extra.get("stages_ms", {}).items())
    answer_log.info("answer %s in %.0f ms: %s cases=%s cited=%s", outcome, total_s * 1000, stages,
                    ",".join(extra.get("cases", [])), ",".join(extra.get("cited", [])), extra={"answer": extra})


class AppMetrics:
    """The app's metrics on their own registry; :meth:`install` observes a :class:`Services` (and its queue)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.answers = Counter("ragvqa_answers", "Chat requests by outcome.", ["outcome"], registry=r)
        self.stage = Histogram("ragvqa_answer_stage_seconds", "Latency of each answer stage.", ["stage"],
                               buckets=BUCKETS, registry=r)
        self.feedback = Counter("ragvqa_feedback", "Feedback votes.", ["rating"], registry=r)
        self.in_progress = Gauge("ragvqa_answers_in_progress", "Answers being computed now.", registry=r)
        self.queue_depth = Gauge("ragvqa_queue_depth", "Requests waiting in the app's queue.", registry=r)
        self.kb_cases = Gauge("ragvqa_kb_cases", "Cases in the knowledge base.", registry=r)
        self.abstention = Gauge("ragvqa_abstention_ratio", "Abstained / (answered + abstained) since start.",
                                registry=r)
        for o in ("answered", "abstained", "error"):
            self.answers.labels(o)
        for s in STAGES:
            self.stage.labels(s)
        for rating in ("up", "down"):
            self.feedback.labels(rating)
        self._counts = {"answered": 0, "abstained": 0}
        self._lock = threading.Lock()
        self._server: Any = None

    # -- observation --------------------------------------------------------------------------------------------
    def observe_answer(self, answer: Answer | None, total_s: float, outcome: str) -> None:
        self.answers.labels(outcome).inc()
        if answer is not None:
            for stage, secs in stage_seconds(answer).items():
                self.stage.labels(stage).observe(secs)
            self.stage.labels("total").observe(total_s)
        with self._lock:
            if outcome in self._counts:
                self._counts[outcome] += 1
            n = self._counts["answered"] + self._counts["abstained"]
            self.abstention.set(self._counts["abstained"] / n if n else 0.0)

    def wrap_stream(self, stream: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """``pipeline.stream`` observed: outcome, stage latencies, total time, in-progress gauge, the answer log."""

        def observed(query: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            t0 = time.perf_counter()
            answer, outcome = None, "error"
            self.in_progress.inc()
            try:
                for ev in stream(query, *args, **kwargs):
                    if ev.type == "done":
                        answer = ev.answer
                        outcome = "abstained" if answer.abstained else "answered"
                    yield ev
            finally:
                self.in_progress.dec()
                total = time.perf_counter() - t0
                if answer is not None or outcome == "error":
                    self.observe_answer(answer, total, outcome)
                    log_answer(answer, total, getattr(query, "text", ""), outcome)

        return observed

    def install(self, services: Services, demo: Any = None) -> AppMetrics:
        """Observe the app's pipeline and feedback; gauges read the KB size and the queue when scraped."""
        pipeline = services.pipeline
        pipeline.stream = self.wrap_stream(pipeline.stream)  # type: ignore[method-assign]
        record = services.feedback.record

        def recorded(*args: Any, **kwargs: Any) -> int:
            fid = record(*args, **kwargs)
            self.feedback.labels("up" if kwargs.get("rating") == 1 else "down").inc()
            return fid

        services.feedback.record = recorded  # type: ignore[method-assign]
        kb = services.kb
        if kb is not None:
            self.kb_cases.set_function(lambda: float(kb.count_cases()))
        if demo is not None:
            def depth() -> float:
                q = getattr(demo, "_queue", None)
                try:
                    return float(len(q)) if q is not None else 0.0
                except TypeError:
                    return 0.0

            self.queue_depth.set_function(depth)
        return self

    # -- exposition ---------------------------------------------------------------------------------------------
    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the scrape endpoint on its own port; returns the port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @classmethod
    def from_env(cls, services: Services, demo: Any = None, host: str | None = None) -> AppMetrics:
        """Observe the app (the answer log line always); serve the metrics only when ``RAGVQA_METRICS_PORT`` is set."""
        port = os.environ.get("RAGVQA_METRICS_PORT", "").strip()
        try:
            p = int(port) if port else None
        except ValueError:
            raise ValueError(f"RAGVQA_METRICS_PORT must be a port number, got {port!r}") from None
        m = cls().install(services, demo)
        if p is not None:
            m.serve(p, os.environ.get("RAGVQA_METRICS_HOST", "").strip() or host or services.ui.host)
        return m
