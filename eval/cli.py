"""``ragvqa eval``: scripted evaluation runs, run comparisons and the MRL × quantization sweep.

Mounted by ``ui/cli.py`` as ``ragvqa eval``; also runnable alone as ``python -m eval.cli``. Heavy imports happen
inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

import typer

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.models.factory import ModelChoice

logger = logging.getLogger("ragvqa.eval")

eval_app = typer.Typer(help="Evaluation: retrieval metrics, rerank ablation, abstention, answers, latency, reports.",
                       no_args_is_help=True)

_NEEDS = {"retrieval": ("embedder",), "rerank": ("embedder", "reranker"), "rag": ("embedder", "reranker", "generator")}


def _model_choice(models: str) -> ModelChoice:
    """``--models`` as the factory's choice, or exit with a clear error."""
    if models == "real":
        return "real"
    if models == "tiny":
        return "tiny"
    _fail(f"models must be real or tiny, got {models!r}")


def _settings(data_dir: Optional[Path]) -> Settings:
    from rag.cli_settings import cli_settings

    return cli_settings(data_dir)


def _fail(msg: str) -> NoReturn:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=2)


@eval_app.command("run")
def run_cmd(
    mode: str = typer.Option("rerank", help="retrieval | rerank (retrieval + rerank ablation) | rag (answers too)."),
    data: Optional[Path] = typer.Option(None, help="Eval .jsonl, BEIR folder or ViDoRe folder; default: the sample KB's eval set."),
    fmt: str = typer.Option("auto", "--format", help="auto | jsonl | beir | vidore."),
    cases: Optional[Path] = typer.Option(None, help="Cases JSONL imported as the KB for a custom .jsonl eval set."),
    split: str = typer.Option("test", help="BEIR/ViDoRe split."),
    language: Optional[str] = typer.Option(None, help="ViDoRe v2: only queries in this language."),
    out: Optional[Path] = typer.Option(None, help="Run folder (a rerun continues it); default data_dir/eval/runs/MODE-DATA-MODELS."),
    models: str = typer.Option("real", help="real | tiny (random weights: numbers are meaningless)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate only this many queries (stratified: keeps out-of-KB share)."),
    top_k: int = typer.Option(20, min=10, help="Cases retrieved (and reranked) per query."),
    top_n: int = typer.Option(5, min=1, help="Cases kept for the answer."),
    embed_dim: Optional[int] = typer.Option(None, help="Matryoshka dimension (default: full)."),
    quantization: Optional[bool] = typer.Option(None, "--quantization/--no-quantization",
                                                help="int8 scalar quantization in the eval store (default: as configured)."),
    instruction: Optional[str] = typer.Option(None, help="Query instruction (default: the app's; a generic one for benchmarks)."),
    max_new_tokens: int = typer.Option(256, min=1, help="Answer length cap in rag mode."),
    rerank: bool = typer.Option(True, help="rag mode: --no-rerank answers from the retrieval top-n (answer-side ablation)."),
    judge: bool = typer.Option(False, help="Also grade answers 1-5 against the reference with the generator (slow)."),
    stat_test: str = typer.Option("student", help="Rerank ablation test: student (paired t-test) | fisher."),
    restart: bool = typer.Option(False, help="Discard earlier results in the run folder."),
    fresh_store: bool = typer.Option(False, help="Rebuild the eval store (cached embeddings are reused)."),
    progress: bool = typer.Option(True, help="Progress bars."),
    data_dir: Optional[Path] = typer.Option(None, help="Overrides RAGVQA_DATA_DIR (sample KB, cache, stores, runs)."),
) -> None:
    """Evaluate the pipeline on an eval set and write results.json, report.md and plots/ to the run folder."""
    from eval.runner import MODES, EvalError, EvalRunner, RunConfig
    from rag.models.factory import load_models

    if mode not in MODES:
        _fail(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    which = _model_choice(models)
    if stat_test not in ("student", "fisher"):
        _fail(f"stat-test must be student or fisher, got {stat_test!r}")
    settings = _settings(data_dir)
    try:
        cfg = RunConfig(mode=mode, data=data, data_format=fmt, cases=cases, split=split, language=language, limit=limit,
                        models=models, top_k=top_k, top_n=top_n, embed_dim=embed_dim, quantization=quantization,
                        instruction=instruction, max_new_tokens=max_new_tokens, rerank=rerank, judge=judge,
                        progress=progress)
    except ValueError as e:
        _fail(str(e))
    name = (data.stem if data is not None and data.is_file() else data.name) if data is not None else "sample"
    tag = f"{mode}{'' if rerank or mode != 'rag' else '-norerank'}"
    run_dir = out or Path(settings.data_dir) / "eval" / "runs" / f"{tag}-{name}-{models}"
    need = tuple(r for r in _NEEDS[mode] if rerank or r != "reranker")
    m = load_models(settings, which, need)
    runner = EvalRunner(cfg, settings, embedder=m.require_embedder(), reranker=m.reranker, generator=m.generator,
                        run_dir=run_dir, restart=restart, fresh_store=fresh_store, stat_test=stat_test)
    try:
        result = runner.run()
    except EvalError as e:
        _fail(str(e))
    finally:
        runner.close()
    typer.echo((result.run_dir / "report.md").read_text("utf-8"))
    typer.echo(f"wrote {result.run_dir / 'results.json'}, {result.run_dir / 'report.md'} and {result.run_dir / 'plots'}")


@eval_app.command("compare")
def compare_cmd(
    run_a: Path = typer.Argument(..., help="Baseline run folder (or its results.jsonl)."),
    run_b: Path = typer.Argument(..., help="Run folder to compare with the baseline."),
    ranking: str = typer.Option("final", help="final (reranked when there is one) | retrieval | rerank."),
    stat_test: str = typer.Option("student", help="student (paired t-test) | fisher (randomisation test)."),
    max_p: float = typer.Option(0.05, help="Significance level."),
    out: Optional[Path] = typer.Option(None, help="Also write compare.json and compare.md into this folder."),
) -> None:
    """Metric deltas of RUN_B against RUN_A on their common queries, with ranx's significance test."""
    from eval.compare import CompareError, compare_run_dirs
    from eval.report import compare_markdown, write_json

    if stat_test not in ("student", "fisher"):
        _fail(f"stat-test must be student or fisher, got {stat_test!r}")
    try:
        result = compare_run_dirs(run_a, run_b, ranking=ranking, stat_test=stat_test, max_p=max_p)
    except CompareError as e:
        _fail(str(e))
    md = compare_markdown(result["comparison"], result["extra"])
    typer.echo(md)
    if out is not None:
        write_json(result, Path(out) / "compare.json")
        (Path(out) / "compare.md").write_text(md + "\n", "utf-8")
        typer.echo(f"wrote {Path(out) / 'compare.json'} and {Path(out) / 'compare.md'}")


@eval_app.command("sweep")
def sweep_cmd(
    data: Optional[Path] = typer.Option(None, help="Eval .jsonl, BEIR or ViDoRe folder; default: the sample KB's eval set."),
    fmt: str = typer.Option("auto", "--format"),
    cases: Optional[Path] = typer.Option(None, help="Cases JSONL imported as the KB for a custom .jsonl eval set."),
    dims: str = typer.Option("auto", help="Comma-separated dimensions (or 'full'); auto = 64, 128, ... up to full."),
    quantization: str = typer.Option("both", help="both | float | int8."),
    models: str = typer.Option("real", help="real | tiny."),
    limit: Optional[int] = typer.Option(None, min=1),
    top_k: int = typer.Option(20, min=10),
    out: Optional[Path] = typer.Option(None, help="Sweep folder; default data_dir/eval/sweeps/DATA-MODELS."),
    progress: bool = typer.Option(True),
    data_dir: Optional[Path] = typer.Option(None),
) -> None:
    """Recall/MRR and index size for each Matryoshka dimension, float32 against int8 (retrieval only)."""
    from eval.report import sweep_markdown
    from eval.runner import EvalError, RunConfig
    from eval.sweep import parse_dims, run_sweep
    from rag.models.factory import load_models

    quants = {"both": (False, True), "float": (False,), "int8": (True,)}.get(quantization)
    if quants is None:
        _fail(f"quantization must be both, float or int8, got {quantization!r}")
    settings = _settings(data_dir)
    embedder = load_models(settings, _model_choice(models), ("embedder",)).require_embedder()
    try:
        dim_list = parse_dims(dims, int(embedder.dim))
        base = RunConfig(mode="retrieval", data=data, data_format=fmt, cases=cases, limit=limit, models=models,
                         top_k=top_k, progress=progress)
    except ValueError as e:
        _fail(str(e))
    name = (data.stem if data.is_file() else data.name) if data is not None else "sample"
    out_dir = out or Path(settings.data_dir) / "eval" / "sweeps" / f"{name}-{models}"
    try:
        result = run_sweep(settings, embedder=embedder, out_dir=out_dir, base=base, dims=dim_list, quantizations=quants)
    except EvalError as e:
        _fail(str(e))
    typer.echo(sweep_markdown(result["points"], result["meta"]))
    typer.echo(f"wrote {out_dir / 'sweep.json'}, {out_dir / 'sweep.md'} and {out_dir / 'mrl_sweep.png'}")


@eval_app.command("kb")
def kb_cmd(
    models: str = typer.Option("real", help="real | tiny (random weights: mechanics only)."),
    k: int = typer.Option(5, min=1, help="Related cases per case for precision@k."),
    min_cluster_size: int = typer.Option(2, min=2, help="HDBSCAN min_cluster_size (sample families have 1-6 cases)."),
    out: Optional[Path] = typer.Option(None, help="Output folder; default data_dir/eval/kb-MODELS."),
    data_dir: Optional[Path] = typer.Option(None, help="Overrides RAGVQA_DATA_DIR (sample KB, outputs)."),
) -> None:
    """Label suggestions (leave-one-out macro-F1), clusters vs fault families (NMI/ARI), related cases (precision@k)
    on the sample KB: results.json, report.md and plots/."""
    from eval.kb_eval import KBEvalError, run_kb_eval
    from rag.models.factory import load_models

    which = _model_choice(models)
    settings = _settings(data_dir)
    if which == "tiny":
        settings = settings.model_copy(update={"device": "cpu", "dtype": "float32"})
    out_dir = out or Path(settings.data_dir) / "eval" / f"kb-{models}"
    embedder = load_models(settings, which, ("embedder",)).require_embedder()
    try:
        run_kb_eval(settings, embedder, out_dir, k=k, min_cluster_size=min_cluster_size, models=models)
    except KBEvalError as e:
        _fail(str(e))
    typer.echo((out_dir / "report.md").read_text("utf-8"))
    typer.echo(f"wrote {out_dir / 'results.json'}, {out_dir / 'report.md'} and {out_dir / 'plots'}")


def main() -> None:  # pragma: no cover - `python -m eval.cli`
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "numba", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    eval_app()


if __name__ == "__main__":  # pragma: no cover
    main()
