"""Prometheus metrics of the served app (tiny models, real pipeline and Gradio): the scrape parses with
``prometheus_client.parser``, the per-stage latency histograms count one more observation per answer, outcomes,
abstention ratio, feedback and KB size are right, and no question text reaches the scrape. Also the one log line
per answer (timings and case ids, no question text by default)."""

from __future__ import annotations

import logging

import httpx
import pytest
from gradio_client import Client, handle_file
from prometheus_client.parser import text_string_to_metric_families
from ui_helpers import Served, served_app

QUESTION = "Secret-ish question about the E13 fuser"


app = served_app("metrics")


@pytest.fixture(scope="module")
def metrics_url(app: Served) -> str:
    from ui.metrics import AppMetrics

    m = AppMetrics().install(app.services, app.demo)
    port = m.serve(0, "127.0.0.1")
    yield f"http://127.0.0.1:{port}/metrics"
    m.close()


def scrape(url: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    text = httpx.get(url, timeout=10).text
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def hist_count(samples, stage: str) -> float:
    return samples[("ragvqa_answer_stage_seconds_count", (("stage", stage),))]


def ask(app: Served, rerank: bool) -> None:
    c = Client(app.url, verbose=False, download_files=False)
    job = c.submit({"text": QUESTION, "files": [handle_file(str(app.images["prn-e13"]))]}, [], "", "", rerank, 1, None,
                   api_name="/chat")
    job.result()
    if rerank:
        status, _ = c.predict("", api_name="/feedback_up")
        assert "recorded" in status


def test_histograms_grow_with_each_answer(app: Served, metrics_url: str, caplog: pytest.LogCaptureFixture) -> None:
    _, s0 = scrape(metrics_url)
    stages = ("embed", "search", "rerank", "first_token", "total")
    before = {st: hist_count(s0, st) for st in stages}
    assert s0[("ragvqa_kb_cases", ())] == 5

    with caplog.at_level(logging.INFO, logger="ragvqa.answers"):
        ask(app, rerank=True)  # threshold 0: answered, reranked, generated
    _, s1 = scrape(metrics_url)
    assert {st: hist_count(s1, st) - before[st] for st in stages} == {st: 1 for st in stages}
    assert s1[("ragvqa_answers_total", (("outcome", "answered"),))] == 1
    assert s1[("ragvqa_feedback_total", (("rating", "up"),))] == 1
    assert s1[("ragvqa_abstention_ratio", ())] == 0.0
    # bucket counts are cumulative and end at the count; the sum is a positive duration
    total_buckets = sorted((float(dict(k[1])["le"]), v) for k, v in s1.items()
                           if k[0] == "ragvqa_answer_stage_seconds_bucket" and dict(k[1])["stage"] == "total")
    assert total_buckets[-1] == (float("inf"), hist_count(s1, "total"))
    assert all(a[1] <= b[1] for a, b in zip(total_buckets, total_buckets[1:], strict=False))
    assert s1[("ragvqa_answer_stage_seconds_sum", (("stage", "total"),))] > 0

    ask(app, rerank=False)  # retrieval threshold 1.5: abstains before reranking and generating
    text, s2 = scrape(metrics_url)
    grown = {st: hist_count(s2, st) - hist_count(s1, st) for st in stages}
    assert grown == {"embed": 1, "search": 1, "rerank": 0, "first_token": 0, "total": 1}, grown
    assert s2[("ragvqa_answers_total", (("outcome", "abstained"),))] == 1
    assert s2[("ragvqa_abstention_ratio", ())] == 0.5
    assert s2[("ragvqa_answers_in_progress", ())] == 0 and s2[("ragvqa_queue_depth", ())] == 0
    # labels are fixed words only: no question text, no case ids
    assert "Secret-ish" not in text and "prn-e13" not in text
    labels = {v for (_, lab) in s2 for _, v in lab}
    assert labels <= {"answered", "abstained", "error", "up", "down", *stages} | {
        v for (n, lab) in s2 for k, v in lab if k == "le"}

    # one log line per answer: timings and case ids, not the question
    lines = [r for r in caplog.records if r.name == "ragvqa.answers"]
    assert len(lines) == 1
    msg = lines[0].getMessage()
    assert "answered" in msg and "embed=" in msg and "prn-e13" in msg and "Secret-ish" not in msg
    assert lines[0].answer["stages_ms"].keys() >= {"embed", "search", "rerank", "first_token"}
