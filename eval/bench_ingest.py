"""Ingestion throughput against the raw embedder on the same items: how much does the knowledge-base machinery
(hashing, content-addressed copies, thumbnails, duplicate search, payloads, Qdrant writes) cost on top of the model?

Goal: an import runs at ≥ 90 % of the embedder's own throughput (``ratio`` = raw seconds / import seconds). The
importer gets there by batching many cases' media into one embedder call and staging the next chunk's files in a
background thread while the model computes.

``ragvqa bench ingest [--checkpoint DIR] [--cases N] ...`` (or ``python -m eval.bench_ingest``).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

__all__ = ["app", "run_ingest_bench", "to_markdown", "write_report"]

log = logging.getLogger(__name__)
GOAL = 0.90


def _photo(seed: int, size: tuple[int, int]):
    """A photo-like picture (gradient, shapes, noise) so JPEG sizes and decode costs are realistic."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    r = np.random.RandomState(seed)
    w, h = size
    base = np.linspace(0, 1, w)[None, :, None] * r.randint(0, 255, 3)[None, None, :]
    base = base + np.linspace(0, 1, h)[:, None, None] * r.randint(0, 255, 3)[None, None, :]
    arr = np.clip(base / 2 + r.normal(0, 12, (h, w, 3)), 0, 255).astype("uint8")
    im = Image.fromarray(arr)
    dr = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = int(r.randint(0, w - 40)), int(r.randint(0, h - 40))
        dr.rectangle([x0, y0, x0 + int(r.randint(20, w // 3)), y0 + int(r.randint(20, h // 3))],
                     fill=tuple(int(c) for c in r.randint(0, 255, 3)))
    return im.filter(ImageFilter.GaussianBlur(0.6))


def make_bench_source(root: Path, n_cases: int, images_per_case: int, size: tuple[int, int]) -> tuple[Path, list[dict]]:
    """A JSONL source of ``n_cases`` cases with ``images_per_case`` JPEG photos each; returns (path, embed items)."""
    from knowledge_base.schema import CaseInput

    root.mkdir(parents=True, exist_ok=True)
    rows, items = [], []
    for i in range(n_cases):
        media = []
        for k in range(images_per_case):
            name = f"c{i:04d}_{k}.jpg"
            _photo(i * 97 + k, size).save(root / name, "JPEG", quality=90)
            media.append(name)
        row = {"id": f"bench-{i:04d}", "title": f"Bench fault {i}", "product_line": ["printer", "pump", "hvac"][i % 3],
               "equipment_model": f"B{i % 5}", "symptom": f"Unit {i} reports error E{i % 40:02d} and stops.",
               "cause": "Synthetic cause.", "solution": ["Check the unit.", "Replace the part."],
               "error_codes": [f"E{i % 40:02d}"], "tags": ["bench"], "media": media}
        case = CaseInput.model_validate({**row, "media": [{"path": m} for m in media]})
        items.append({"text": case.to_case([]).embedding_text()})
        items += [{"image": str(root / m)} for m in media]
        rows.append(row)
    path = root / "cases.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, items


def run_ingest_bench(model_dir: str | Path, *, n_cases: int = 32, images_per_case: int = 2,
                     image_size: tuple[int, int] = (768, 576), device: str = "cpu", dtype: str = "float32",
                     batch_size: int = 8, chunk_cases: int = 16, prefetch: bool = True,
                     near_dup_threshold: float | None = 0.9999, repeats: int = 3,
                     work_dir: str | Path | None = None) -> dict[str, Any]:
    """Time the raw embedder on the import's items and a fresh import (``repeats`` times, alternating; the fastest
    of each counts), then an unchanged re-import."""
    import torch

    from knowledge_base.admin import KnowledgeBase
    from knowledge_base.ingest import IngestOptions
    from rag.config import Settings
    from rag.models.embedder import Embedder

    tmp = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="ragvqa-bench-ingest-"))
    try:
        src, items = make_bench_source(tmp / "src", n_cases, images_per_case, image_size)
        emb = Embedder.from_pretrained(model_dir, dtype=dtype, device=device)
        n_media = n_cases * images_per_case
        emb.embed(items[:2], batch_size=batch_size)  # warm-up (kernels, allocator)
        # Duplicate search runs (its cost is part of the import), but random-weight checkpoints map these synthetic
        # photos close together, so the threshold is set where it drops nothing: every media item is written.
        options = IngestOptions(chunk_cases=chunk_cases, prefetch=prefetch, embed_batch_size=batch_size,
                                near_dup_threshold=near_dup_threshold)

        def sync() -> None:
            if torch.cuda.is_available() and emb.device.type == "cuda":
                torch.cuda.synchronize()

        # Alternate raw and import runs and keep the fastest of each: on a shared machine the minimum is the
        # measurement least disturbed by other processes.
        raw_runs, ingest_runs, embed_runs, raw_cpu, ingest_cpu = [], [], [], [], []
        for rep in range(repeats):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            emb.embed(items, batch_size=batch_size)
            sync()
            raw_runs.append(time.perf_counter() - t0)
            raw_cpu.append(time.process_time() - c0)
            settings = Settings(data_dir=tmp / f"data{rep}", embed_batch_size=batch_size)
            with KnowledgeBase.open(settings, emb, options=options) as kb:
                t0, c0 = time.perf_counter(), time.process_time()
                res = kb.import_path(src)
                sync()
                ingest_runs.append(time.perf_counter() - t0)
                ingest_cpu.append(time.process_time() - c0)
                embed_runs.append(res.embed_s)
                if rep == repeats - 1:
                    t0 = time.perf_counter()
                    again = kb.import_path(src)
                    reimport_s = time.perf_counter() - t0
                    problems = kb.check().problems
            if res.added != n_cases or res.rejected:
                raise RuntimeError(f"bench import did not add every case: {res.summary()}")
        raw_s, ingest_s = min(raw_runs), min(ingest_runs)
        if res.media_embedded != n_media:
            log.warning("only %d of %d media were embedded (%d duplicates dropped)", res.media_embedded, n_media,
                        len(res.duplicates))
        ratio = raw_s / ingest_s
        return {
            "config": {"model_dir": str(model_dir), "n_cases": n_cases, "images_per_case": images_per_case,
                       "image_size": list(image_size), "device": str(emb.device), "dtype": str(emb.dtype),
                       "batch_size": batch_size, "chunk_cases": chunk_cases, "prefetch": prefetch,
                       "near_dup_threshold": near_dup_threshold, "duplicates_dropped": len(res.duplicates),
                       "hidden_size": emb.dim, "torch_threads": torch.get_num_threads(),
                       "machine": platform.machine(), "python": platform.python_version()},
            "raw_embedder": {"seconds": round(raw_s, 3), "runs": [round(x, 3) for x in raw_runs], "items": len(items),
                             "cases_per_s": round(n_cases / raw_s, 2), "media_per_s": round(n_media / raw_s, 2)},
            "ingest": {"seconds": round(ingest_s, 3), "runs": [round(x, 3) for x in ingest_runs],
                       "embed_seconds": round(embed_runs[ingest_runs.index(ingest_s)], 3),
                       "cases_per_s": round(n_cases / ingest_s, 2), "media_per_s": round(n_media / ingest_s, 2),
                       "overhead_seconds": round(ingest_s - embed_runs[ingest_runs.index(ingest_s)], 3)},
            "reimport_unchanged": {"seconds": round(reimport_s, 3), "skipped": again.skipped,
                                   "cases_per_s": round(n_cases / reimport_s, 1)},
            "ratio": round(ratio, 3),
            # CPU seconds of this process (all threads): immune to other processes on a shared machine, and
            # pessimistic, since file staging counts in full even where it overlaps the model.
            "cpu": {"raw_seconds": round(min(raw_cpu), 3), "ingest_seconds": round(min(ingest_cpu), 3),
                    "ratio": round(min(raw_cpu) / min(ingest_cpu), 3)},
            "goal": GOAL,
            "meets_goal": ratio >= GOAL,
            "check_problems": problems,
        }
    finally:
        if work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def to_markdown(res: dict[str, Any]) -> str:
    c, raw, ing, re_ = res["config"], res["raw_embedder"], res["ingest"], res["reimport_unchanged"]
    verdict = "meets" if res["meets_goal"] else "misses"
    return "\n".join([
        "# Ingestion throughput vs raw embedder",
        "",
        f"{c['n_cases']} cases × {c['images_per_case']} JPEG images {c['image_size'][0]}×{c['image_size'][1]} + case text; "
        f"model hidden {c['hidden_size']} on {c['device']} ({c['dtype']}), batch {c['batch_size']}, "
        f"chunk {c['chunk_cases']} cases, prefetch {c['prefetch']}.",
        "",
        f"Fastest of {len(raw['runs'])} alternating runs each (raw: {raw['runs']} s; import: {ing['runs']} s).",
        "",
        "| run | seconds | cases/s | media/s |",
        "|---|---:|---:|---:|",
        f"| raw embedder (same items, one call) | {raw['seconds']} | {raw['cases_per_s']} | {raw['media_per_s']} |",
        f"| import (KB: files, thumbnails, dedup, Qdrant) | {ing['seconds']} | {ing['cases_per_s']} | {ing['media_per_s']} |",
        f"| re-import, unchanged (skipped) | {re_['seconds']} | {re_['cases_per_s']} | – |",
        "",
        f"**Import throughput = {res['ratio'] * 100:.1f} % of the raw embedder** ({verdict} the {res['goal'] * 100:.0f} % goal; "
        f"by CPU time of this process, {res['cpu']['ratio'] * 100:.1f} %: {res['cpu']['raw_seconds']} s raw vs "
        f"{res['cpu']['ingest_seconds']} s import, a pessimistic bound that counts overlapped file work in full); "
        f"time inside embedder calls during the import: {ing['embed_seconds']} s, everything else "
        f"{ing['overhead_seconds']} s (partly overlapped with the model by the staging thread).",
        "",
    ])


def write_report(res: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``bench_ingest.json`` + ``bench_ingest.md`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "bench_ingest.json", out / "bench_ingest.md"
    js.write_text(json.dumps(res, indent=2), encoding="utf-8")
    md.write_text(to_markdown(res), encoding="utf-8")
    return js, md


app = typer.Typer(help="Ingestion throughput vs the raw embedder.", no_args_is_help=False)


@app.command()
def main(
    checkpoint: Annotated[Optional[Path], typer.Option(help="Model dir; default: build the 'bench' size in a temp dir.")] = None,
    cases: Annotated[int, typer.Option(min=1)] = 32,
    images_per_case: Annotated[int, typer.Option(min=1)] = 2,
    width: Annotated[int, typer.Option(min=32)] = 768,
    height: Annotated[int, typer.Option(min=32)] = 576,
    device: Annotated[str, typer.Option()] = "cpu",
    dtype: Annotated[str, typer.Option()] = "float32",
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    chunk_cases: Annotated[int, typer.Option(min=1)] = 16,
    prefetch: Annotated[bool, typer.Option()] = True,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    out: Annotated[Path, typer.Option(help="Output folder for JSON + markdown.")] = Path("bench-results"),
) -> None:
    """Run the benchmark and write the report."""
    from rag.models.tiny import make_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint or make_checkpoint(Path(tmp) / "bench", size="bench")
        res = run_ingest_bench(ckpt, n_cases=cases, images_per_case=images_per_case, image_size=(width, height),
                               device=device, dtype=dtype, batch_size=batch_size, chunk_cases=chunk_cases,
                               prefetch=prefetch, repeats=repeats)
    js, md = write_report(res, out)
    typer.echo(to_markdown(res))
    typer.echo(f"wrote {js} and {md}")


if __name__ == "__main__":  # pragma: no cover
    app()
