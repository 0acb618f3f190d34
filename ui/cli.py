"""``ragvqa``: one command for serving, asking, the knowledge base, evaluation and benchmarks.

Heavy imports happen inside each command so that ``ragvqa --help`` stays instant.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="Retrieval-augmented visual QA for support desks (Qwen3-VL + Qdrant).", no_args_is_help=True)
models_app = typer.Typer(help="Model checkpoints.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (results as JSON + markdown).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")

console = Console()
logger = logging.getLogger("ragvqa")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)])
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


@bench_app.command("models")
def bench_models(
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint dir; default: build the 'bench' size in a temp dir."),
    out: Path = typer.Option(Path("bench-results"), help="Output folder for JSON + markdown."),
    dtype: str = typer.Option("float32"),
    device: str = typer.Option("cpu"),
    repeats: int = typer.Option(2, min=1),
    embed_batch_size: int = typer.Option(8, min=1),
    rerank_batch_size: int = typer.Option(1, min=1),
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


if __name__ == "__main__":  # pragma: no cover
    app()
