"""``ragvqa``: one command for serving, asking, the knowledge base, evaluation and benchmarks.

Heavy imports happen inside each command so that ``ragvqa --help`` stays instant; the command groups of other
packages (``kb``, ``eval``, ``bench ingest``) are added with :func:`mount`, the one way to attach a sub-app, which
imports it only when it runs. Settings come from :func:`rag.cli_settings.cli_settings` (shared by every group).
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

app = typer.Typer(help="Retrieval-augmented visual QA for support desks (Qwen3-VL + Qdrant).", no_args_is_help=True)
models_app = typer.Typer(help="Model checkpoints.", no_args_is_help=True)
bench_app = typer.Typer(name="bench", help="Benchmarks (results as JSON + markdown).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")

console = Console()
logger = logging.getLogger("ragvqa")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    fmt = os.environ.get("RAGVQA_LOG_FORMAT", "").strip().lower()
    if fmt == "json":  # one JSON object per line on stderr, for log collectors (ui.logfmt)
        from ui.logfmt import json_handler

        logging.basicConfig(level=level, handlers=[json_handler()], force=True)
    elif fmt in ("", "text"):
        logging.basicConfig(level=level, format="%(message)s",
                            handlers=[RichHandler(console=Console(stderr=True), show_path=False)])
    else:
        raise typer.BadParameter(f"RAGVQA_LOG_FORMAT must be 'text' or 'json', got {fmt!r}")
    for noisy in ("httpx", "urllib3", "numba", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@models_app.command("make-tiny")
def make_tiny(
    out_dir: Path = typer.Argument(..., help="Where to save tokenizer, processor and random weights."),
    size: str = typer.Option("tiny", help="tiny (tests, smoke runs) | bench (timing, a few hundred MB) | full-2b (real 2B shape)."),
    seed: int = typer.Option(0),
) -> None:
    """Build an offline random-weight Qwen3-VL checkpoint."""
    from rag.models.tiny import make_checkpoint

    if size not in ("tiny", "bench", "full-2b"):
        raise typer.BadParameter(f"size must be tiny, bench or full-2b, got {size!r}")
    path = make_checkpoint(out_dir, size=size, seed=seed)  # type: ignore[arg-type]
    console.print(f"[green]saved {size} checkpoint to {path}")


def _print_and_list(markdown: str, written: tuple[Path, Path]) -> None:
    """A benchmark's markdown on the console, then where its JSON + markdown were written."""
    console.print(markdown, markup=False)
    for path in written:
        console.print(f"wrote {path}")


@bench_app.command("models")
def bench_models(
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint dir; default: build the 'bench' size in a temp dir."),
    out: Path = typer.Option(Path("bench-results"), help="Output folder for JSON + markdown."),
    dtype: str = typer.Option("float32"),
    device: str = typer.Option("cpu"),
    repeats: int = typer.Option(2, min=1),
    embed_batch_size: int = typer.Option(1, min=1, help="1 = the CPU default (unpadded items); 8 on GPUs."),
    rerank_batch_size: int = typer.Option(4, min=1, help="documents per forward after the shared prefix"),
) -> None:
    """Embedder and reranker throughput against the official strategy, with an output-equality check."""
    from eval.bench_models import run_models_bench, to_markdown, write_report
    from rag.models.tiny import make_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint or make_checkpoint(Path(tmp) / "bench", size="bench")
        res = run_models_bench(ckpt, dtype=dtype, device=device, repeats=repeats,
                               embed_batch_size=embed_batch_size, rerank_batch_size=rerank_batch_size)
    js, md = write_report(res, out)
    console.print(to_markdown(res))
    console.print(f"wrote {js} and {md}")


# -- serve / ask --------------------------------------------------------------------------------------------------
MODELS_HELP = "real (settings' Qwen3-VL checkpoints) | tiny (offline random weights: answers are meaningless)."


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Interface to bind (default RAGVQA_UI_HOST or 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default RAGVQA_UI_PORT or 7860)."),
    models: str = typer.Option("real", help=MODELS_HELP),
    data_dir: Optional[Path] = typer.Option(None, help="Store, media, feedback (default RAGVQA_DATA_DIR or ./data)."),
    concurrency: Optional[int] = typer.Option(None, min=1, help="Concurrent answers (default RAGVQA_UI_CONCURRENCY_LIMIT)."),
    queue_size: Optional[int] = typer.Option(None, min=1, help="Max waiting requests (default RAGVQA_UI_QUEUE_MAX_SIZE)."),
    sample: bool = typer.Option(True, help="Load the bundled sample KB when the store is empty."),
) -> None:
    """Run the web app (chat + admin) on the embedded Qdrant Edge store under data_dir."""
    from ui.health import Readiness, StartupServer
    from ui.settings import UISettings

    ui = UISettings()
    readiness = Readiness("loading models")
    try:  # the probes answer before torch and the models are even imported (docker healthchecks)
        early = StartupServer(host or ui.host, port or ui.port, readiness).start()
    except OSError as e:
        console.print(f"[red]cannot listen on {host or ui.host}:{port or ui.port}: {e}")
        raise typer.Exit(2) from None
    from rag.cli_settings import check_models, cli_settings
    from rag.models.loading import ModelNotAvailableError
    from rag.store import StoreError, StoreMismatchError

    check_models(models)
    settings = cli_settings(data_dir)
    ui = ui.model_copy(update={k: v for k, v in {"concurrency_limit": concurrency, "queue_max_size": queue_size}.items()
                               if v is not None})
    from ui.serving import ServeHandle
    from ui.serving import serve as run_service

    if models == "tiny":
        console.print("[bold yellow]Smoke-test mode: tiny random models, answers are meaningless.")
    handle = ServeHandle(readiness=readiness, early=early)

    def freeze_when_started() -> None:
        # Models, store and app live as long as the server: take them out of the cyclic collector's view, so a full
        # collection does not walk them during an answer (pauses of up to 0.3 s measured in `ragvqa bench pipeline`).
        if handle.started.wait() and handle.services is not None:
            gc.collect()
            gc.freeze()

    threading.Thread(target=freeze_when_started, daemon=True).start()
    try:
        code = run_service(settings, models=models, ui=ui, sample=sample, host=host, port=port,  # type: ignore[arg-type]
                           handle=handle)
    except (ModelNotAvailableError, StoreMismatchError, StoreError) as e:
        console.print(f"[red]{e}")
        raise typer.Exit(2) from None
    if code:
        raise typer.Exit(code)


def _query_media(image: list[Path], video: Optional[Path], pdf: Optional[Path], page: int, budget: Any, tmp: Path):
    from ui.upload import prepare_uploads

    files = [str(p) for p in image] + ([str(video)] if video else []) + ([str(pdf)] if pdf else [])
    return prepare_uploads(files, pdf_page=page, out_dir=tmp, budget=budget)


def answer_json(answer: Any) -> dict[str, Any]:
    """The machine-readable form of an answer printed by ``ragvqa ask --json``."""
    return {
        "answer": answer.text,
        "abstained": answer.abstained,
        "cited": answer.cited,
        "reason": answer.decision.reason if answer.decision else None,
        "cases": [{"case_id": c.case_id, "title": c.title, "score": round(c.score, 4),
                   "retrieval_score": round(c.retrieval_score, 4),
                   "rerank_score": None if c.rerank_score is None else round(c.rerank_score, 4),
                   "thumbnail": c.thumbnail, "cited": c.case_id in answer.cited} for c in answer.cases],
        "timings_ms": [{"stage": s.stage, "ms": s.ms} for s in answer.trace.stages],
    }


@app.command()
def ask(
    question: str = typer.Argument("", help="The question (may be empty when media is given)."),
    image: list[Path] = typer.Option([], "--image", "-i", help="Photo or screenshot (repeatable)."),
    video: Optional[Path] = typer.Option(None, "--video", help="A short clip."),
    pdf: Optional[Path] = typer.Option(None, "--pdf", help="A PDF; --page selects the page used (default 1)."),
    page: int = typer.Option(1, "--page", min=1, help="1-based page of --pdf."),
    product_line: Optional[str] = typer.Option(None, help="Only cases of this product line."),
    equipment_model: Optional[str] = typer.Option(None, help="Only cases of this equipment model."),
    rerank: bool = typer.Option(True, help="Rerank the retrieved cases."),
    models: str = typer.Option("real", help=MODELS_HELP),
    data_dir: Optional[Path] = typer.Option(None, help="Store, media (default RAGVQA_DATA_DIR or ./data)."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="Answer length cap."),
    sample: bool = typer.Option(True, help="Load the bundled sample KB when the store is empty."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (answer, citations, scores, timings)."),
) -> None:
    """Answer one question from the command line, with citations."""
    from rag.cli_settings import check_models, cli_settings
    from rag.models.loading import ModelNotAvailableError
    from rag.pipeline import Query, QueryError
    from rag.store import StoreError, StoreMismatchError
    from ui.services import build_services
    from ui.upload import UploadError

    check_models(models)
    settings = cli_settings(data_dir, max_new_tokens=max_new_tokens)
    try:
        services = build_services(settings, models=models, credentials=None, load_sample=sample)  # type: ignore[arg-type]
    except (ModelNotAvailableError, StoreMismatchError, StoreError) as e:
        console.print(f"[red]{e}")
        raise typer.Exit(2) from None
    out = Console(highlight=False, soft_wrap=True)
    try:
        with tempfile.TemporaryDirectory(prefix="ragvqa-ask-") as tmp:
            try:
                media = _query_media(image, video, pdf, page, services.settings.vision, Path(tmp))
                filters = {k: v for k, v in {"product_line": product_line, "equipment_model": equipment_model}.items() if v}
                images = [media.decoded.get(p, p) for p in media.images]  # decoded once, reused by every model
                query = Query(text=question, images=images, video=media.video, filters=filters, rerank=rerank)
                answer = None
                for ev in services.pipeline.stream(query):
                    if ev.type == "token" and not as_json:
                        out.print(ev.text, end="", markup=False)
                    elif ev.type == "done":
                        answer = ev.answer
            except (UploadError, QueryError, ValueError) as e:
                console.print(f"[red]{e}")
                raise typer.Exit(2) from None
        assert answer is not None
        if as_json:
            sys.stdout.write(json.dumps(answer_json(answer), ensure_ascii=False) + "\n")
            return
        out.print()
        if models == "tiny":
            out.print("[yellow](tiny random models: this answer is meaningless)")
        label = "Possibly related cases (abstained):" if answer.abstained else "Citations:"
        out.print(f"\n[bold]{label}")
        shown = [c for c in answer.cases if c.case_id in answer.cited] or answer.cases[:3]
        for c in shown:
            star = "*" if c.case_id in answer.cited else "-"
            out.print(f" {star} [{c.case_id}] {c.title} (score {c.score:.2f})", markup=False)
    finally:
        services.close()


# -- other engineers' command groups, imported only when used ---------------------------------------------------------
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _import(module: str, what: str) -> Any:
    """``module.what``, imported only when its command runs (so ``ragvqa --help`` stays instant).

    Every module named here ships with ragvqa: an import that fails is a broken install or a bug, never an optional
    part that is absent, so it fails loudly with the real error (traceback, non-zero exit) after a line naming the
    module, rather than an exit-2 message blaming a missing component (which let a broken build pass CI).
    """
    try:
        return getattr(importlib.import_module(module), what)
    except (ImportError, AttributeError) as e:
        Console(stderr=True).print(f"ragvqa: cannot load {module}.{what}: {type(e).__name__}: {e}", style="red",
                                   markup=False, highlight=False)
        raise


def _run_typer(sub: Any, args: list[str], prog: str) -> None:
    cmd = typer.main.get_command(sub)
    cmd.main(args=args, prog_name=prog, standalone_mode=True)


def mount(parent: typer.Typer, name: str, target: str, help: str) -> None:
    """The one way to add another package's typer app as a sub-command: ``target`` (``"module:attr"``) is imported
    only when the sub-command runs, so ``ragvqa --help`` imports none of them; arguments (``--help`` included) are
    passed through to the sub-app unchanged."""
    module, attr = target.split(":")
    prog = f"ragvqa {name}" if parent is app else f"ragvqa {parent.info.name} {name}"

    def run_mounted(ctx: typer.Context) -> None:
        _run_typer(_import(module, attr), list(ctx.args), prog)

    parent.command(name, context_settings=_PASSTHROUGH, add_help_option=False, help=help)(run_mounted)


mount(app, "kb", "knowledge_base.cli:kb_app",
      "Knowledge base: add, import, list, delete, check, reindex, export (knowledge_base.cli).")
mount(app, "eval", "eval.cli:eval_app", "Scripted evaluations: retrieval/answer quality on the eval set (eval.cli).")


@bench_app.command("store")
def bench_store(
    sizes: list[int] = typer.Option([10_000, 100_000], "--size", help="Number of points (repeatable)."),
    dims: list[int] = typer.Option([1024], "--dim", help="Vector dimension (repeatable)."),
    queries: int = typer.Option(200, min=1),
    hnsw_ef: Optional[int] = typer.Option(None, min=1, help="Override RAGVQA_STORE_HNSW_EF (default: as the app)."),
    local: bool = typer.Option(True, help="Also measure qdrant-client local mode."),
    acorn: Optional[bool] = typer.Option(None, "--acorn/--no-acorn",
                                         help="Override RAGVQA_STORE_ACORN (default: as the app)."),
    quantization: Optional[bool] = typer.Option(None, "--quantization/--no-quantization",
                                                help="Override RAGVQA_STORE_QUANTIZATION (default: as the app)."),
    out: Path = typer.Option(Path("bench-results"), help="Output folder for JSON + markdown."),
) -> None:
    """Vector-store latency and recall on the app's store settings (Qdrant Edge vs qdrant-client local mode)."""
    from rag.config import Settings

    run = _import("eval.bench_store", "run_store_bench")
    write = _import("eval.bench_store", "write_report")
    overrides = {k: v for k, v in {"store_hnsw_ef": hnsw_ef, "store_acorn": acorn,
                                   "store_quantization": quantization}.items() if v is not None}
    settings = Settings().model_copy(update=overrides)
    res = run(sizes, dims, settings=settings, n_queries=queries, include_local=local)
    for path in write(res, out):
        console.print(f"wrote {path}")


@bench_app.command("pipeline")
def bench_pipeline(
    sizes: list[int] = typer.Option([1_000, 100_000], "--size", help="Number of cases (repeatable)."),
    dim: int = typer.Option(1024, help="Vector dimension (1024 = MRL prefix of the 2B embedder; 2048 = full)."),
    queries: int = typer.Option(200, min=10, help="Timed queries per size."),
    tokens: int = typer.Option(200, min=1, help="Pre-generated answer tokens replayed through the stream."),
    work_dir: Optional[Path] = typer.Option(None, help="Keep/reuse the built stores here (default: a temp dir)."),
    out: Path = typer.Option(Path("bench-results"), help="Output folder for JSON + markdown."),
) -> None:
    """Non-model overhead of one query (decode, search, fetch, prompt, streaming) at each KB size, p50/p95."""
    from eval.bench_pipeline import render_markdown, run_pipeline_bench, write_report

    res = run_pipeline_bench(sizes, dim=dim, n_queries=queries, n_tokens=tokens, work_dir=work_dir)
    _print_and_list(render_markdown(res), write_report(res, out))


@bench_app.command("kb")
def bench_kb(
    sizes: list[int] = typer.Option([1_000, 100_000], "--size", help="Number of cases (repeatable)."),
    dim: int = typer.Option(2048, help="Vector dimension (2048 = the 2B embedder's full size)."),
    queries: int = typer.Option(200, min=10, help="Timed calls per size."),
    optimize: bool = typer.Option(True, help="Build HNSW + int8 like the app's store (minutes at 100k)."),
    work_dir: Optional[Path] = typer.Option(None, help="Keep/reuse the built stores here (default: a temp dir)."),
    out: Path = typer.Option(Path("bench-results"), help="Output folder for JSON + markdown."),
) -> None:
    """Related cases, label suggestion, clustering (time + peak RSS) and cluster assignment at each KB size."""
    from eval.bench_kb import render_markdown, run_kb_bench, write_report

    res = run_kb_bench(sizes, dim=dim, n_queries=queries, work_dir=work_dir, optimize=optimize)
    _print_and_list(render_markdown(res), write_report(res, out))


mount(bench_app, "ingest", "eval.bench_ingest:app",
      "Ingestion throughput against the raw embedder (eval.bench_ingest); arguments are passed through.")


@bench_app.command("query")
def bench_query(
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint dir; default: a random one of --size, built once in --cache-dir."),
    size: str = typer.Option("full-2b", help="tiny | bench | full-2b (the real 2B shape) when no --checkpoint."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where built checkpoints are kept (default ~/.cache/ragvqa/bench-checkpoints)."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto."),
    dtype: str = typer.Option("auto", help="auto (by hardware, as the app) | bfloat16 | float16 | float32."),
    attn: str = typer.Option("auto", help="auto | sdpa | eager | flash_attention_2."),
    docs: int = typer.Option(2, min=1, help="Case documents reranked (top-k)."),
    new_tokens: int = typer.Option(8, min=1, help="Answer tokens timed after the first."),
    case_images: int = typer.Option(2, min=0, help="Case photos in the generator prompt."),
    query_max_pixels: str = typer.Option("auto", help="Query-time image cap: auto (as the app: 256 tokens per image on "
                                         "CPU), official, or a pixel count."),
    quantize: str = typer.Option("none", help="none | int8 (dynamic int8 linear layers; CPU float32 only)."),
    stage: list[str] = typer.Option(["embed", "rerank", "generate"], "--stage", help="Stages to run (repeatable)."),
    compare: bool = typer.Option(False, help="Also run float32 at the official budget and report the quality cost."),
    out: Path = typer.Option(Path("bench-results"), help="Output folder for JSON + markdown."),
    name: str = typer.Option("bench-query", help="File name stem of the results."),
) -> None:
    """Model time of one real query (embed photo + question, rerank top-k, answer), per stage, with peak RSS."""
    from pydantic import ValidationError

    from eval.bench_query import DEFAULT_CACHE, QueryBenchConfig, render_markdown, run_query_bench, write_report

    try:
        cfg = QueryBenchConfig(checkpoint=checkpoint, size=size, cache_dir=cache_dir or DEFAULT_CACHE, device=device,
                               dtype=dtype, attn_implementation=attn, docs=docs, new_tokens=new_tokens,
                               case_images=case_images, query_max_pixels=query_max_pixels, quantize=quantize,
                               stages=tuple(stage), compare=compare)
        res = run_query_bench(cfg)
    except (ValidationError, ValueError, FileNotFoundError) as e:
        console.print(f"[red]{e}")
        raise typer.Exit(2) from None
    _print_and_list(render_markdown(res), write_report(res, out, name=name))


@bench_app.command("rerank-depth")
def bench_rerank_depth(
    run_dir: Path = typer.Argument(..., help="A `ragvqa eval run --mode rerank` folder (every retrieved case reranked)."),
    margin: list[float] = typer.Option([0.02, 0.05, 0.1, 0.2], "--margin", help="Cosine margins to try (repeatable)."),
    out: Path = typer.Option(Path("bench-results"), help="Output folder for JSON + markdown."),
) -> None:
    """Adaptive rerank depth: ranking quality (ranx) and rerank work saved per margin, from one eval run."""
    from eval.bench_query import render_depth_markdown, rerank_depth_study

    try:
        res = rerank_depth_study(run_dir, list(margin))
    except (OSError, ValueError) as e:
        console.print(f"[red]{e}")
        raise typer.Exit(2) from None
    md = render_depth_markdown(res)
    console.print(md, markup=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-rerank-depth.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / "bench-rerank-depth.md").write_text(md)
    console.print(f"wrote {out / 'bench-rerank-depth.json'} and {out / 'bench-rerank-depth.md'}")


@app.command()
def doctor(
    bench: Path = typer.Option(Path("bench-results") / "bench-query.json", help="A `ragvqa bench query` result to report."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Hardware, the dtype and budgets the app would use here, the measured one-query time, and warnings."""
    from rag.cli_settings import cli_settings
    from ui.doctor import doctor_report, report_lines

    rep = doctor_report(cli_settings(), bench)
    if as_json:
        sys.stdout.write(rep.model_dump_json() + "\n")
        return
    out = Console(highlight=False, soft_wrap=True)
    for line in report_lines(rep, bench):
        out.print(line, markup=False)
    for w in rep.warnings:
        out.print(f"[bold yellow]warning:[/] {w}")


if __name__ == "__main__":  # pragma: no cover
    app()
