"""Non-model overhead of one chat query at 1k and 100k cases: everything around the three models' forward passes.

What is timed, per query (the real code paths, on a real Qdrant Edge store):

* ``decode``  — the chat's ``load_query_image``: the query photo decoded once and given the official resize (the
  three models then reuse that image), plus the embedder-side preparation of it; the query *vector* is
  precomputed (a case member + noise), so no forward pass is timed;
* ``search``  — ``search_cases`` (HNSW, top-20 cases grouped from points) and ``fetch`` — text-point payloads of
  those cases turned into candidates (the pipeline's ``Retrieve`` stage);
* ``abstain`` — the decision (rerank is a model stage and is left out);
* ``prompt``  — prompt assembly: the Generate stage's messages (history, reference cases) through the real
  ``Generator.prepare`` chat template and tokenizer, images left out;
* ``vision``  — reported *beside* the goal: the rest of ``Generator.prepare``, i.e. decode, resize and the
  processor's patchify/normalise of the query photo + 3 case images (sampled on every 10th query, it is slow on
  CPU); it is model-input preprocessing that runs once per answer;
* ``stream``  — replay of a pre-generated token list through ``RagPipeline.stream`` events and the chat tab's
  ``StreamRenderer`` (inert Markdown, re-rendered at most 20 times a second);
* ``total``   — wall time of the whole loop above, minus ``vision`` where it was sampled.

Data: synthetic clustered unit vectors of the real dimension (1024 = Matryoshka prefix of the 2B embedder by
default), a text point and an image point per case with payloads shaped like ingestion's (full case JSON,
compact document, media paths); case images are real JPEGs on disk. The store uses the app's Edge defaults
(payload indexes, payload-aware HNSW), so the 100k build takes minutes on 2 cores: pass ``--work-dir`` to keep and
reuse it. Payload and vector pages are warmed once before timing (a running server's steady state; the first queries after a
cold start are slower), and the objects loaded at start-up are frozen out of the garbage collector, as ``ragvqa serve``
does. Goal: total p95 ≤ 30 ms at 100k cases.

Run: ``ragvqa bench pipeline --size 1000 --size 100000`` (JSON + markdown into ``bench-results/``).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from eval.bench_report import write_bench_report

if TYPE_CHECKING:
    from rag.models.generator import Generator

logger = logging.getLogger(__name__)

GOAL = {"n_cases": 100_000, "p95_ms": 30.0}
STORE_FORMAT = 2  # bump when the synthetic data changes (a kept --work-dir store is then rebuilt)
#: Tags per case, drawn from a vocabulary this large (real tag vocabularies are wide and sparse; a tiny one would make
#: every tag a big payload class and multiply the store's payload-aware HNSW build).
TAGS_PER_CASE, N_TAGS = 2, 2000
N_CLUSTERS = 200
N_LINES = 4
N_MODELS = 40
N_IMAGES = 24
STAGES = ("decode", "search", "fetch", "abstain", "prompt", "stream", "total")
#: Reported beside the goal, not in it: the generator processor's pixel work on query + case images.
EXTRA = ("total_cpu", "vision")

_WORDS = ("fuser error code display blinking tray jam roller pressure valve compressor fan motor sensor board relay "
          "fuse leak seal bearing noise vibration overheating thermostat filter coil refrigerant drum toner cartridge "
          "alarm reset firmware cable connector voltage phase contactor pump impeller gauge").split()


# ---------------------------------------------------------------------------------------------------- data
def _text(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS, size=n_words)).capitalize() + "."


def make_images(media_root: Path, n: int = N_IMAGES, seed: int = 0) -> list[tuple[str, str]]:
    """Case photos (1024×768 JPEG) and their 256-px thumbnails; returns relative (path, thumbnail) pairs."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    (media_root / "img").mkdir(parents=True, exist_ok=True)
    (media_root / "thumbs").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = (rng.random((48, 64, 3)) * 255).astype("uint8")
        img = Image.fromarray(base).resize((1024, 768), Image.BILINEAR)
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = int(rng.integers(0, 900)), int(rng.integers(0, 650))
            d.rectangle([x, y, x + int(rng.integers(20, 120)), y + int(rng.integers(20, 110))],
                        fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        rel, thumb = f"img/case-{i:03d}.jpg", f"thumbs/case-{i:03d}.jpg"
        img.save(media_root / rel, quality=88)
        img.copy().resize((256, 192)).save(media_root / thumb, quality=85)
        out.append((rel, thumb))
    return out


def query_photo(path: Path, seed: int = 7) -> Path:
    """A 1280×960 JPEG 'phone photo' (decode cost is what matters, not content)."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((120, 160, 3)) * 255).astype("uint8")).resize((1280, 960), Image.BICUBIC)
    img.filter(ImageFilter.SMOOTH).save(path, quality=90)
    return path


def case_payloads(i: int, model: int, rng: np.random.Generator, images: Sequence[tuple[str, str]]) -> tuple[dict, dict]:
    """(text point payload, image point payload) shaped like knowledge_base ingestion's."""
    cid = f"case-{i:07d}"
    line, em = f"PL{model * N_LINES // N_MODELS}", f"EM-{model:02d}"
    rel, thumb = images[i % len(images)]
    sha = f"{i:064x}"
    mid = f"m-{sha[:16]}"
    title = f"{em}: " + _text(rng, 6)
    case = {
        "id": cid, "title": title, "product_line": line, "equipment_model": em,
        "symptom": _text(rng, 45), "cause": _text(rng, 25),
        "solution": [_text(rng, 12) for _ in range(4)], "error_codes": [f"E{int(rng.integers(10, 99))}"],
        "tags": [f"tag-{int(t):04d}" for t in rng.choice(N_TAGS, size=TAGS_PER_CASE, replace=False)],
        "severity": "medium", "source": "bench",
        "links": [], "version": 1, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "media": [{"id": mid, "kind": "image", "sha256": sha, "path": rel, "mime": "image/jpeg", "caption": _text(rng, 8),
                   "source_file": "photo.jpg", "page": None, "width": 1024, "height": 768, "duration_s": None,
                   "thumbnail": thumb}],
    }
    document = (f"[case:{cid}] {title}\nEquipment: {line} / {em}\nError codes: {case['error_codes'][0]}\n"
                f"Symptom: {case['symptom']}\nCause: {case['cause']}\nSolution: "
                + " ".join(f"{k}) {s}" for k, s in enumerate(case["solution"], 1)))
    common = {"case_id": cid, "product_line": line, "equipment_model": em, "tags": case["tags"], "title": title}
    text = {**common, "media_id": None, "kind": "text", "case": case, "document": document, "content_hash": sha}
    media = {**common, "media_id": mid, "kind": "image", "media_path": rel, "thumbnail": thumb, "caption": "",
             "sha256": sha, "page": None}
    return text, media


def build_store(root: Path, n_cases: int, dim: int, seed: int = 0, batch: int = 2048) -> tuple[Any, np.ndarray, list[str], dict]:
    """An optimised Edge store with ``n_cases`` cases (text + image point each), reused when already built.

    Returns (store, case vectors (text points), product line of each case, build info).
    """
    from rag.store import point_id
    from rag.store.base import StoreMeta, VectorPoint
    from rag.store.edge import EdgeStore

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CLUSTERS, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster = rng.integers(0, N_CLUSTERS, size=n_cases)
    model = np.where(rng.random(n_cases) < 0.7, cluster % N_MODELS, rng.integers(0, N_MODELS, size=n_cases))
    lines = [f"PL{int(m) * N_LINES // N_MODELS}" for m in model]

    def vectors(idx: np.ndarray, salt: int) -> np.ndarray:
        r = np.random.default_rng(seed * 1_000_003 + salt)
        x = centres[cluster[idx]] + r.normal(scale=0.5 / np.sqrt(dim), size=(len(idx), dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    text_vecs = np.concatenate([vectors(np.arange(s, min(s + batch, n_cases)), s) for s in range(0, n_cases, batch)])
    marker = root / "complete.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("format") == STORE_FORMAT and info.get("n_cases") == n_cases and info.get("dim") == dim:
            logger.info("reusing the built store at %s", root)
            return EdgeStore.open(root / "qdrant"), text_vecs, lines, {**info, "reused": True}
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    images = make_images(root / "media", seed=seed)
    store = EdgeStore.open(root / "qdrant", StoreMeta(embedder_id="bench", dim=dim))
    t0 = time.perf_counter()
    prng = np.random.default_rng(seed + 1)
    for s in range(0, n_cases, batch):
        idx = np.arange(s, min(s + batch, n_cases))
        img_vecs = vectors(idx, s + 7)
        # the image point sits near its case text (same fault) but not on it
        img_vecs = text_vecs[idx] * 0.8 + img_vecs * 0.6
        img_vecs /= np.linalg.norm(img_vecs, axis=1, keepdims=True)
        pts = []
        for j, i in enumerate(idx):
            tp, mp = case_payloads(int(i), int(model[i]), prng, images)
            pts.append(VectorPoint(id=point_id(tp["case_id"], None), vector=text_vecs[i], payload=tp))
            pts.append(VectorPoint(id=point_id(tp["case_id"], mp["media_id"]), vector=img_vecs[j], payload=mp))
        store.upsert(pts, batch_size=len(pts))
    upsert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.optimize()
    store.flush()
    info = {"format": STORE_FORMAT, "n_cases": n_cases, "points": 2 * n_cases, "dim": dim,
            "upsert_s": round(upsert_s, 1), "optimize_s": round(time.perf_counter() - t0, 1)}
    marker.write_text(json.dumps(info))
    logger.info("built %d cases (%d points, dim %d): upsert %.1f s, optimize %.1f s", n_cases, 2 * n_cases, dim,
                info["upsert_s"], info["optimize_s"])
    return store, text_vecs, lines, {**info, "reused": False}


# ---------------------------------------------------------------------------------------------------- harness
class PrecomputedEmbedder:
    """Stands in for the embedder's forward pass only: decodes/resizes the query media like the real one does,
    then returns the vector set for this query (so the search sees a realistic query vector)."""

    def __init__(self, dim: int, budget: Any) -> None:
        self.dim, self.budget = dim, budget
        self.vector: np.ndarray | None = None

    def embed(self, items: Sequence[dict], instruction: str | None = None, dim: int | None = None) -> np.ndarray:
        from rag.models.vision import prepare_image

        for it in items:
            imgs = it.get("image") or []
            for im in imgs if isinstance(imgs, list) else [imgs]:
                prepare_image(im, self.budget)
        assert self.vector is not None
        return self.vector[None, :]


class ReplayGenerator:
    """The real ``Generator.prepare`` minus pixels on every call (chat template + tokenisation of the assembled
    prompt), the full ``prepare`` (with the images' decode, resize and patchify) on every ``vision_every``-th call,
    then a pre-generated token list instead of ``model.generate``."""

    def __init__(self, generator: Generator, tokens: list[str], vision_every: int = 10) -> None:
        self.generator, self.tokens, self.vision_every = generator, tokens, vision_every
        self.calls = 0
        self.prompt_ms: list[float] = []
        self.vision_ms: list[float | None] = []

    def count_tokens(self, text: str) -> int:
        return self.generator.count_tokens(text)

    @staticmethod
    def text_only(messages: Any) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            c = m["content"]
            out.append({**m, "content": c if isinstance(c, str) else [x for x in c if x.get("type") == "text"]})
        return out

    def stream(self, messages: Any, **_: Any) -> Iterator[str]:
        t0 = time.perf_counter()
        self.generator.prepare(self.text_only(messages))
        self.prompt_ms.append((time.perf_counter() - t0) * 1000)
        vision = None
        if self.vision_every and self.calls % self.vision_every == 0:
            t0 = time.perf_counter()
            self.generator.prepare(messages)
            vision = max(0.0, (time.perf_counter() - t0) * 1000 - self.prompt_ms[-1])
        self.vision_ms.append(vision)
        self.calls += 1
        yield from self.tokens


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "mean": round(float(a.mean()), 3)}


def bench_size(n_cases: int, *, dim: int, n_queries: int, n_tokens: int, generator: Generator, work_dir: Path,
               seed: int = 0) -> dict[str, Any]:
    from rag.config import Settings
    from rag.models.query_image import load_query_image
    from rag.pipeline import Query, RagPipeline, Turn
    from rag.pipeline.render import StreamRenderer

    root = work_dir / f"pipeline-{n_cases}-{dim}"
    store, text_vecs, lines, info = build_store(root, n_cases, dim, seed=seed)
    try:
        settings = Settings(data_dir=root, rerank_enabled=False, abstain_retrieval_threshold=-1.0)
        emb = PrecomputedEmbedder(dim, settings.vision)
        words = ("The fuser unit [case-0000001] overheats because the thermistor connector is loose. Steps: 1. power "
                 "off 2. reseat the connector 3. clear the error ").split()
        tokens = [words[i % len(words)] + " " for i in range(n_tokens)]
        gen = ReplayGenerator(generator, tokens)
        pipe = RagPipeline.from_components(embedder=emb, reranker=None, generator=gen, store=store, settings=settings,
                                           media_root=root / "media")
        photo = query_photo(root / "query.jpg")
        t0 = time.perf_counter()
        for _ in store.scroll(batch_size=1024, with_vectors=True):  # a running server has payload and vector
            pass  # pages in the page cache; the first queries after a cold start are slower
        warm_s = time.perf_counter() - t0
        gc.collect()  # as `ragvqa serve` does once the models and the store are loaded
        gc.freeze()
        rng = np.random.default_rng(seed + 99)
        history = [Turn(question="The printer shows E13 after warming up", answer="Check the fuser thermistor [x].",
                        case_ids=[])]
        runs: dict[str, dict[str, Any]] = {}
        for scenario in ("unfiltered", "product_line filter"):
            samples: dict[str, list[float]] = {s: [] for s in (*STAGES, *EXTRA)}
            for qi in range(n_queries + 10):
                member = int(rng.integers(0, n_cases))
                q = text_vecs[member] + rng.normal(scale=0.3 / np.sqrt(dim), size=dim).astype(np.float32)
                emb.vector = (q / np.linalg.norm(q)).astype(np.float32)
                filters = {"product_line": lines[member]} if scenario != "unfiltered" else {}
                t0, c0 = time.perf_counter(), time.process_time()
                image = load_query_image(photo, settings.vision)  # the chat decodes the upload once
                decode_ms = (time.perf_counter() - t0) * 1000
                query = Query(text="What is wrong and how do I fix it?", images=[image], filters=filters,
                              history=history if qi % 2 else [])
                answer = None
                renderer = StreamRenderer()
                for ev in pipe.stream(query):
                    if ev.type == "token":
                        renderer.feed(ev.text)  # what the chat tab does per token
                    elif ev.type == "done":
                        answer = ev.answer
                total = (time.perf_counter() - t0) * 1000
                cpu = (time.process_time() - c0) * 1000
                if qi < 10 or answer is None:
                    continue
                tr = answer.trace
                prompt, vision = gen.prompt_ms[-1], gen.vision_ms[-1]
                samples["decode"].append(decode_ms + tr.ms("embed"))
                samples["search"].append(tr.ms("search"))
                samples["fetch"].append(tr.ms("fetch"))
                samples["abstain"].append(tr.ms("abstain"))
                samples["prompt"].append(prompt)
                samples["stream"].append(max(0.0, tr.ms("generate") - prompt - (vision or 0.0)))
                samples["total"].append(total - (vision or 0.0))
                if vision is None:  # CPU of a query that also ran the sampled vision preprocessing is not separable
                    samples["total_cpu"].append(cpu)
                if vision is not None:
                    samples["vision"].append(vision)
            runs[scenario] = {k: _percentiles(v) for k, v in samples.items() if v}
        return {"n_cases": n_cases, "points": 2 * n_cases, "dim": dim, "build": {**info, "warm_s": round(warm_s, 1)},
                "scenarios": runs,
                "n_queries": n_queries, "n_tokens": n_tokens}
    finally:
        gc.unfreeze()
        store.close()


def run_pipeline_bench(sizes: Sequence[int] = (1_000, 100_000), *, dim: int = 1024, n_queries: int = 200,
                       n_tokens: int = 200, work_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Run :func:`bench_size` for each size; returns a JSON-able dict (see :func:`render_markdown`)."""
    from rag.models.generator import Generator
    from rag.models.tiny import make_checkpoint

    tmp = tempfile.TemporaryDirectory(prefix="ragvqa-bench-pipeline-") if work_dir is None else None
    wd = Path(tmp.name if tmp else work_dir)  # type: ignore[arg-type]
    wd.mkdir(parents=True, exist_ok=True)
    try:
        ckpt = wd / "tiny-processor"
        if not (ckpt / "config.json").exists():
            make_checkpoint(ckpt, size="tiny")
        # Only ``prepare`` is used (template + processor): the checkpoint's weights never run.
        generator = Generator.from_pretrained(ckpt, device="cpu", dtype="float32")
        runs = [bench_size(n, dim=dim, n_queries=n_queries, n_tokens=n_tokens, generator=generator, work_dir=wd,
                           seed=seed) for n in sizes]
    finally:
        if tmp is not None:
            tmp.cleanup()
    result = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "env": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
                "numpy": np.__version__, "load_average": _loadavg()},
        "params": {"dim": dim, "n_queries": n_queries, "n_tokens": n_tokens, "top_k_cases": 20, "context_case_images": 3,
                   "query_photo": "1280x960 JPEG", "case_images": "1024x768 JPEG",
                   "excluded": "embedder/reranker/generator forward passes (vector precomputed, tokens replayed)"},
        "runs": runs,
    }
    result["goal"] = check_goal(result)
    return result


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def check_goal(result: dict[str, Any]) -> dict[str, Any] | None:
    run = next((r for r in result["runs"] if r["n_cases"] == GOAL["n_cases"]), None)
    if run is None:
        return None
    worst = max(s["total"]["p95"] for s in run["scenarios"].values())
    worst_cpu = max(s["total_cpu"]["p95"] for s in run["scenarios"].values())
    return {**GOAL, "worst_total_p95_ms": worst, "met": worst <= GOAL["p95_ms"], "worst_total_cpu_p95_ms": worst_cpu,
            "met_cpu": worst_cpu <= GOAL["p95_ms"]}


def render_markdown(result: dict[str, Any]) -> str:
    p = result["params"]
    lines = ["# Pipeline overhead (no model forward passes)", "",
             f"{result['created_at']} · {result['env']['cpu_count']} CPUs (load {result['env'].get('load_average')}) · dim {p['dim']} · {p['n_queries']} queries "
             f"per scenario · {p['n_tokens']} replayed tokens · top-{p['top_k_cases']} cases, "
             f"{p['context_case_images']} case images in the prompt", ""]
    cols = (*STAGES, *EXTRA)
    lines += ["| cases | scenario | " + " | ".join(f"{s} p50/p95 ms" for s in cols) + " |",
              "|---:|---|" + "---:|" * len(cols)]
    for r in result["runs"]:
        for name, st in r["scenarios"].items():
            cells = " | ".join(f"{st[s]['p50']:.2f} / {st[s]['p95']:.2f}" if s in st else "–" for s in cols)
            lines.append(f"| {r['n_cases']:,} | {name} | {cells} |")
    lines.append("")
    for r in result["runs"]:
        b = r["build"]
        how = ("reused" if b.get("reused") else f"upsert {b.get('upsert_s')} s + optimize {b.get('optimize_s')} s") + \
            f"; page-cache warm-up {b.get('warm_s')} s"
        lines.append(f"- {r['n_cases']:,} cases = {r['points']:,} points × {r['dim']}: store {how}")
    g = result.get("goal")
    if g:
        lines += ["", f"**Goal** total p95 ≤ {g['p95_ms']} ms at {g['n_cases']:,} cases: worst wall p95 "
                  f"{g['worst_total_p95_ms']:.2f} ms → {'met' if g['met'] else 'NOT met'}; worst CPU p95 "
                  f"{g['worst_total_cpu_p95_ms']:.2f} ms → {'met' if g['met_cpu'] else 'NOT met'} (CPU time is what "
                  "other processes on a shared machine do not inflate; Edge search threads count in it)"]
    lines += ["", "Stages: decode = query photo decoded once + official resize (the chat's load_query_image) and the "
              "embedder-side preparation of that image; search/fetch = Retrieve stage on Qdrant Edge; "
              "prompt = Generate messages + chat template + tokenizer; stream = token replay through pipeline events "
              "+ chat rendering; total = the goal's scope (all of the above, measured end to end); total_cpu = the same in "
              "process CPU time. vision (outside "
              "the goal, sampled every 10th query) = the generator processor's decode/resize/patchify of the query "
              "photo and 3 case images."]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    return write_bench_report(result, out_dir, "pipeline_bench", render_markdown(result))
