"""Build the sample knowledge base: ``cases.jsonl`` + media, a service-manual PDF, video clips and an eval set.

Output layout under ``dest``::

    cases.jsonl            one CaseInput per line; media paths are relative to dest ("media/...")
    media/                 KB pictures (PNG), lx4200_service_manual.pdf (+ _zh.pdf: the Chinese pages), *.mp4 clips
    eval.jsonl             one EvalQuery per line; media paths relative to dest ("eval_media/...")
    eval_media/            query pictures/clips: different renderings of the KB media
    manifest.json          sha256 of every file above (quick change/determinism check)

Everything is derived from ``seed`` through hashed sub-seeds, and files carry no timestamps, so two builds
with the same seed are byte-identical (on the same Pillow/PyAV versions).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydantic import BaseModel

from knowledge_base.sample import augment
from knowledge_base.sample.catalog import Catalog, ManualPage, Spec, load_catalog
from knowledge_base.sample.scenes import render, render_pump_gauge_frames
from knowledge_base.schema import CaseInput, EvalQuery

__all__ = ["SampleKB", "build_sample_kb"]

log = logging.getLogger(__name__)

MANUAL_NAME = "lx4200_service_manual.pdf"
MANUAL_TITLE = "Printek LX-4200 Service Manual"
MANUAL_ZH_NAME = "lx4200_service_manual_zh.pdf"
MANUAL_ZH_TITLE = "Printek LX-4200 维修手册"
#: The cases written in Chinese (issue 14), beside the English ``cases.json``: read by :func:`load_zh`.
CATALOG_ZH_JSON = Path(__file__).with_name("cases_zh.json")
#: Fixed PDF dates (Pillow would otherwise stamp the current time and break byte-identical builds).
_PDF_DATE = time.gmtime(1_704_067_200)  # 2024-01-01T00:00:00Z
HVAC_VIDEO_CASE = "hvac-rtu48-hp-lockout"
PUMP_VIDEO_CASE = "pump-cp150-cavitation"
VIDEO_FPS = 10

_GENERIC_QUESTIONS = (
    "What's wrong with it and how do I fix it?",
    "Customer sent this photo. What should they do?",
    "Seen on site today - what is the cause?",
    "Is this serious? What is the fix?",
    "How do I clear this?",
    "What does this mean?",
)


class ZhSpec(Spec):
    """A case written in Chinese: a :class:`Spec` plus its fault family (``like:<English case id>`` when it shares
    the family of an English case, else a family name). Its ``ask`` is an English question (cross-lingual eval)."""

    family: str


class CrossQuery(BaseModel):
    """A Chinese question about an English case (cross-lingual eval)."""

    case_id: str
    text: str


class ZhCatalog(BaseModel):
    """``cases_zh.json``: the Chinese cases, their manual pages (a separate Chinese PDF) and Chinese questions
    about English cases."""

    cases: list[ZhSpec]
    manual_pages: list[ManualPage]
    queries: list[CrossQuery]


def load_zh(path: Path | None = None) -> ZhCatalog:
    p = path or CATALOG_ZH_JSON
    try:
        return ZhCatalog.model_validate(json.loads(p.read_text("utf-8")))
    except (OSError, ValueError) as e:
        raise ValueError(f"sample catalog {p}: {e}") from e


def sample_catalog() -> tuple[Catalog, ZhCatalog]:
    """The whole sample: the English catalog with the Chinese cases appended (ids, product lines and links checked
    together), and the Chinese catalog itself."""
    en, zh = load_catalog(), load_zh()
    both = Catalog(product_lines=en.product_lines, cases=[*en.cases, *zh.cases],
                   manual_pages=[*en.manual_pages, *zh.manual_pages], abstain_text=en.abstain_text,
                   abstain_images=en.abstain_images)
    bad = [q.case_id for q in zh.queries if q.case_id not in both.case_by_id]
    if bad:
        raise ValueError(f"sample catalog {CATALOG_ZH_JSON}: questions about unknown case(s) {bad}")
    return both, zh


class SampleKB(BaseModel):
    """Paths of a built sample KB (all absolute) and a few counts."""

    root: Path
    cases_jsonl: Path
    media_dir: Path
    eval_jsonl: Path
    eval_media_dir: Path
    manual_pdf: Path
    video: Path
    videos: list[Path]
    manifest: Path
    n_cases: int
    n_queries: int

    def load_cases(self) -> list[CaseInput]:
        """Parse ``cases.jsonl`` (media paths stay relative to ``root``)."""
        return [CaseInput.model_validate_json(line) for line in self.cases_jsonl.read_text("utf-8").splitlines() if line.strip()]

    def load_eval(self) -> list[EvalQuery]:
        """Parse ``eval.jsonl`` (media paths stay relative to ``root``)."""
        return [EvalQuery.model_validate_json(line) for line in self.eval_jsonl.read_text("utf-8").splitlines() if line.strip()]


def _rng(*parts: object) -> random.Random:
    """An independent, reproducible generator per purpose (string seeds hash with SHA-512, not ``hash()``)."""
    return random.Random("|".join(map(str, parts)))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=3)  # level 6+ is ~2x slower for ~12% smaller files
    return buf.getvalue()


class _Writer:
    """Writes files under the root and records their hashes for the manifest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hashes: dict[str, str] = {}

    def write(self, rel: str, data: bytes) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.hashes[rel] = hashlib.sha256(data).hexdigest()
        return path


if TYPE_CHECKING:  # pragma: no cover - PyAV is imported when a clip is encoded
    import av

Job = Callable[[], list[tuple[str, bytes]]]


def _run_jobs(jobs: list[Job], workers: int | None) -> list[tuple[str, bytes]]:
    """Run media jobs, in threads when useful (Pillow, zlib and x264 release the GIL); results keep job order."""
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if workers <= 1:
        results = [job() for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sample-kb") as ex:
            results = list(ex.map(lambda job: job(), jobs))
    return [item for res in results for item in res]


def build_sample_kb(dest: Path | str, *, seed: int = 0, workers: int | None = None) -> SampleKB:
    """Generate the sample KB under ``dest`` (created if needed; files we generate are overwritten).

    ``workers`` = threads for rendering/encoding (default: CPU count, max 8); output does not depend on it.
    """
    t0 = time.perf_counter()
    full, zh = sample_catalog()
    en = load_catalog()
    # the English part keeps its own manual (page numbers), eval ids and pictures; the Chinese part is appended
    cat = full.model_copy(update={"manual_pages": en.manual_pages})
    root = Path(dest).resolve()
    root.mkdir(parents=True, exist_ok=True)
    w = _Writer(root)
    jobs: list[Job] = []

    # ---- KB pictures
    media_rel: dict[str, list[dict[str, Any]]] = {c.id: [] for c in cat.cases}
    for case in cat.cases:
        for k, im in enumerate(case.images, 1):
            rel = f"media/{case.id}_{k}.png"
            jobs.append(partial(_kb_image_job, rel, im.scene, im.params, seed, case.id, k))
            media_rel[case.id].append({"path": rel, "kind": "image", "caption": im.caption})

    # ---- service manual (multi-page PDF); each page belongs to a case
    manual_rel = f"media/{MANUAL_NAME}"
    pages = _manual_pages(cat, seed)
    jobs.append(lambda: [(manual_rel, _pdf(pages))])
    for page_no, mp in enumerate(cat.manual_pages, 1):
        media_rel[mp.case_id].append(
            {"path": manual_rel, "kind": "pdf_page", "page": page_no, "caption": f"{MANUAL_TITLE}, p. {page_no}: {mp.page['title']}"}
        )
    manual_zh_rel = f"media/{MANUAL_ZH_NAME}"
    pages_zh = _manual_pages_zh(zh.manual_pages, seed)
    jobs.append(lambda: [(manual_zh_rel, _pdf(pages_zh, MANUAL_ZH_TITLE))])
    for page_no, mp in enumerate(zh.manual_pages, 1):
        media_rel[mp.case_id].append({"path": manual_zh_rel, "kind": "pdf_page", "page": page_no,
                                      "caption": f"{MANUAL_ZH_TITLE}，第 {page_no} 页：{mp.page['title']}"})

    # ---- video clips
    hvac_rel = f"media/{HVAC_VIDEO_CASE}_blink.mp4"
    jobs.append(lambda: [(hvac_rel, _mp4(_hvac_blink_frames(cat, _rng(seed, "kb", HVAC_VIDEO_CASE, "video")), VIDEO_FPS))])
    media_rel[HVAC_VIDEO_CASE].append(
        {"path": hvac_rel, "kind": "video", "caption": "Clip: RTU-48 board, red FAULT LED flashing 3 times then pausing (HP)"})
    pump_rel = f"media/{PUMP_VIDEO_CASE}_gauges.mp4"
    jobs.append(lambda: [(pump_rel, _mp4(_pump_frames(cat, _rng(seed, "kb", PUMP_VIDEO_CASE, "video"), phase=0.0), VIDEO_FPS))])
    media_rel[PUMP_VIDEO_CASE].append(
        {"path": pump_rel, "kind": "video", "caption": "Clip: CP-150 discharge needle fluctuating 3-5 bar, suction in vacuum"})

    # ---- cases.jsonl (validated through the schema so the catalog cannot drift from it)
    rows = []
    for case in cat.cases:
        row = _case_row(case, media_rel[case.id])
        CaseInput.model_validate(row)
        rows.append(json.dumps(row, ensure_ascii=False))

    # ---- eval set (query media are produced by jobs too)
    queries = _eval_queries(en, jobs, seed, pages)
    queries += _eval_queries_zh(full, zh, jobs, seed, pages_zh, first=len(queries) + 1)
    lines = []
    for q in queries:
        EvalQuery.model_validate(q)
        lines.append(json.dumps(q, ensure_ascii=False))

    for rel, data in _run_jobs(jobs, workers):
        w.write(rel, data)
    w.write("cases.jsonl", ("\n".join(rows) + "\n").encode("utf-8"))
    w.write("eval.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))

    manifest = dict(sorted(w.hashes.items()))
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
    log.info("sample KB: %d cases, %d eval queries, %d files in %.1fs -> %s",
             len(cat.cases), len(queries), len(manifest), time.perf_counter() - t0, root)
    return SampleKB(
        root=root,
        cases_jsonl=root / "cases.jsonl",
        media_dir=root / "media",
        eval_jsonl=root / "eval.jsonl",
        eval_media_dir=root / "eval_media",
        manual_pdf=root / manual_rel,
        video=root / hvac_rel,
        videos=[root / hvac_rel, root / pump_rel],
        manifest=root / "manifest.json",
        n_cases=len(cat.cases),
        n_queries=len(queries),
    )


def _kb_image_job(rel: str, scene: str, params: dict[str, Any], seed: int, case_id: str, k: int) -> list[tuple[str, bytes]]:
    return [(rel, _png(render(scene, params, _rng(seed, "kb", case_id, k))))]


# ============================================================================================ cases


def _case_row(case: Spec, media: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": case.id,
        "title": case.title,
        "product_line": case.product_line,
        "equipment_model": case.equipment_model,
        "symptom": case.symptom,
        "cause": case.cause,
        "solution": case.solution,
        "error_codes": case.error_codes,
        "tags": case.tags,
        "severity": case.severity,
        "source": "sample-kb",
        "links": [link.model_dump() for link in case.links],
        "created_at": f"{case.created.isoformat()}T09:00:00Z",
        "media": media,
    }


# ============================================================================================ manual


def _manual_pages(cat: Catalog, seed: int) -> list[Image.Image]:
    pages = []
    n_pages = len(cat.manual_pages)
    for n, mp in enumerate(cat.manual_pages, 1):
        p: dict[str, Any] = dict(mp.page)
        p["diagram"] = render(mp.diagram.scene, mp.diagram.params, _rng(seed, "manual-figure", n))
        p.update(manual=MANUAL_TITLE, section=f"Section {str(mp.page['title']).split()[0]}", page_label=f"Page {n} of {n_pages}",
                 footer="For authorised service personnel only - rev. C")
        pages.append(render("manual_page", p, _rng(seed, "manual", n)))
    return pages


def _manual_pages_zh(manual_pages: list[ManualPage], seed: int) -> list[Image.Image]:
    """The Chinese service-manual pages (drawn with the CJK font, see ``draw.font``)."""
    pages = []
    for n, mp in enumerate(manual_pages, 1):
        p: dict[str, Any] = dict(mp.page)
        p["diagram"] = render(mp.diagram.scene, mp.diagram.params, _rng(seed, "manual-zh-figure", n))
        p.update(manual=MANUAL_ZH_TITLE, section=f"第 {str(mp.page['title']).split()[0]} 节",
                 page_label=f"第 {n} 页，共 {len(manual_pages)} 页", footer="仅限授权维修人员使用 - C 版")
        pages.append(render("manual_page", p, _rng(seed, "manual-zh", n)))
    return pages


def _pdf(pages: list[Image.Image], title: str = MANUAL_TITLE) -> bytes:
    """Multi-page PDF via Pillow (JPEG-compressed page images, like a scanned manual) with fixed dates."""
    buf = io.BytesIO()
    pages[0].save(
        buf, "PDF", save_all=True, append_images=pages[1:], resolution=100.0, quality=80,
        title=title, author="Printek Service", creationDate=_PDF_DATE, modDate=_PDF_DATE,
    )
    return buf.getvalue()


# ============================================================================================ video


def _hvac_blink_frames(cat: Catalog, rng: random.Random, size: tuple[int, int] = (384, 272), fps: int = VIDEO_FPS,
                       seconds: float = 2.6) -> list[Image.Image]:
    """RTU-48 board with the FAULT LED flashing 3 times, then a pause (flash code 3 = high pressure)."""
    spec = cat.case_by_id[HVAC_VIDEO_CASE].images[0].params
    scene_seed = rng.getrandbits(32)  # same incidental details in both renderings: only the LED changes
    on_p = dict(spec, leds=[("STATUS", "green", "on"), ("FAULT", "red", "on"), ("ECON", "amber", "off")])
    off_p = dict(spec, leds=[("STATUS", "green", "on"), ("FAULT", "red", "off"), ("ECON", "amber", "off")])
    on = render("hvac_board", on_p, random.Random(scene_seed)).resize(size, Image.Resampling.LANCZOS)
    off = render("hvac_board", off_p, random.Random(scene_seed)).resize(size, Image.Resampling.LANCZOS)
    frames = []
    for i in range(int(seconds * fps)):
        t = (i / fps) % 2.2  # cycle: 3 x (0.2 s on, 0.2 s off), then 1.0 s pause
        lit = t < 1.2 and (t % 0.4) < 0.2
        frames.append(on if lit else off)
    return frames


def _pump_frames(cat: Catalog, rng: random.Random, phase: float, size: tuple[int, int] = (384, 240), fps: int = VIDEO_FPS,
                 seconds: float = 2.5) -> list[Image.Image]:
    """CP-150 gauges: discharge needle swinging 3-5 bar, suction flickering around -0.6 bar (cavitation)."""
    p = cat.case_by_id[PUMP_VIDEO_CASE].images[0].params
    n = int(seconds * fps)
    jitter = [rng.uniform(-0.25, 0.25) for _ in range(n)]
    dis = [4.0 + 0.9 * math.sin(2 * math.pi * 1.3 * i / fps + phase) + jitter[i] for i in range(n)]
    suc = [-0.6 + 0.06 * math.sin(2 * math.pi * 2.1 * i / fps + phase) for i in range(n)]
    frames = render_pump_gauge_frames(p, rng, {"discharge": dis, "suction": suc})
    return [f.resize(size, Image.Resampling.LANCZOS) for f in frames]


def _yuv420(img: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB -> Y, U, V planes (4:2:0, BT.601 limited range) in numpy.

    Done here rather than by FFmpeg's swscale: the first swscale conversion in a process can differ from
    later ones, which made encoded clips differ between runs.
    """
    a = np.asarray(img.convert("RGB"), np.float32)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape
    u = u.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    v = v.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    yp, up, vp = (np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, u, v))
    return yp, up, vp


def _video_frame(img: Image.Image) -> av.VideoFrame:
    """A yuv420p ``av.VideoFrame`` whose every byte is initialised, row padding included.

    Row padding is filled (edge replicated) so nothing the encoder may read is uninitialised memory.
    """
    import av

    w, h = img.size
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, data in zip(frame.planes, _yuv420(img), strict=False):
        buf = np.empty((data.shape[0], plane.line_size), np.uint8)
        buf[:, : data.shape[1]] = data
        buf[:, data.shape[1]:] = data[:, -1:]  # replicate the edge, as x264 pads itself
        plane.update(buf.tobytes())
    return frame


def _mp4(frames: list[Image.Image], fps: int) -> bytes:
    """H.264 MP4 (MPEG-4 Part 2 if this FFmpeg lacks libx264): browsers play H.264, so the UI can show it.

    Byte-identical output needs: bit-exact muxing (no encoder/date tags), one encoder thread, frames converted
    by us (``_video_frame``) and x264 without assembly (``asm=0``): with SIMD enabled the bitstream differed
    between processes (PyAV 18 wheels).  The clips are tiny, so the C code paths cost little.
    """
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    opts = {"threads": "1"}
    if codec == "libx264":
        opts.update({"preset": "veryfast", "crf": "28", "g": str(fps * 2), "x264-params": "asm=0"})
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as c:
        s = c.add_stream(codec, rate=fps, options=opts)
        assert isinstance(s, av.VideoStream)
        s.width, s.height = frames[0].size
        s.pix_fmt = "yuv420p"
        for i, f in enumerate(frames):
            vf = _video_frame(f)
            vf.pts = i
            for packet in s.encode(vf):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return buf.getvalue()


# ============================================================================================ eval


def _relevant(case: Spec) -> dict[str, int]:
    rel = {case.id: 2}
    for link in case.links:
        rel.setdefault(link.case_id, 1)
    return rel


def _reference(case: Spec) -> str:
    steps = " ".join(f"{i}) {s}" for i, s in enumerate(case.solution, 1))
    return f"This matches case {case.id}: {case.title}. Cause: {case.cause} Fix: {steps}"


class _QueryRows:
    """Eval rows numbered ``q{first:03d}`` on; picture and clip generation is queued on ``jobs``.

    Every picture query ends up as JPEG (all recipes encode JPEG), so file names are known before the jobs run.
    """

    def __init__(self, jobs: list[Job], first: int = 1) -> None:
        self.rows: list[dict[str, Any]] = []
        self.jobs, self.first = jobs, first

    def next_id(self) -> str:
        return f"q{self.first + len(self.rows):03d}"

    def add(self, kind: str, *, text: str | None = None, image: str | None = None, video: str | None = None,
            relevant: dict[str, int] | None = None, case: Spec | None = None, filters: dict[str, str] | None = None,
            variant: str | None = None) -> None:
        q: dict[str, Any] = {"id": self.next_id(), "kind": kind}
        for key, val in (("text", text), ("image", image), ("video", video), ("filters", filters)):
            if val is not None:
                q[key] = val
        q["relevant"] = relevant or {}
        if case is not None:
            q["reference_answer"] = _reference(case)
            q["key_facts"] = list(case.key_facts)
        else:
            q["reference_answer"] = "The knowledge base has no matching case; say so and suggest escalating instead of guessing."
            q["key_facts"] = []
        q["expect_abstain"] = not relevant
        if variant:
            q["variant"] = variant
        self.rows.append(q)

    def add_case(self, kind: str, case: Spec, variant: str, *, text: str | None = None, image: str | None = None) -> None:
        """A row answered by ``case``."""
        self.add(kind, text=text, image=image, relevant=_relevant(case), case=case, variant=variant)

    def picture(self, img_fn: Callable[[random.Random], Image.Image], recipe: str,
                rng_parts: tuple[object, ...]) -> tuple[str, str]:
        """Queue a picture job for the next row; returns (relative path, variant description) — known up front."""
        rel = f"eval_media/{self.next_id()}.jpg"

        def job() -> list[tuple[str, bytes]]:
            rng = _rng(*rng_parts)
            data, ext, _how = augment.apply(recipe, img_fn(rng), rng)
            assert ext == ".jpg"
            return [(rel, data)]

        self.jobs.append(job)
        return rel, augment.DESCRIPTIONS[recipe]


def _picture_queries(q: _QueryRows, cat: Catalog, seed: int) -> None:
    """One picture query per case: a re-rendering (other incidental details) + a photo-like recipe."""
    for i, case in enumerate(cat.cases):
        k = 0 if len(case.images) == 1 else i % 2
        im = case.images[k]
        recipe = "rescaled_jpeg" if im.scene == "pos_dialog" and i % 2 else augment.RECIPES[i % len(augment.RECIPES)]
        rel, how = q.picture(partial(render, im.scene, im.params), recipe, (seed, "query", case.id, k))
        with_text = i % 3 == 0
        filters = {"product_line": case.product_line} if i % 7 == 3 else None
        q.add("image+text" if with_text else "image", text=_GENERIC_QUESTIONS[i % len(_GENERIC_QUESTIONS)] if with_text else None,
              image=rel, relevant=_relevant(case), case=case, filters=filters, variant=f"re-rendered; {how}")


def _text_queries(q: _QueryRows, cat: Catalog) -> None:
    """Text-only questions, worded differently from the case text."""
    for i, case in enumerate(c for c in cat.cases if c.ask):
        filters = {"product_line": case.product_line} if i % 4 == 1 else None
        q.add("text", text=case.ask, relevant=_relevant(case), case=case, filters=filters, variant="paraphrased question")


def _video_queries(q: _QueryRows, cat: Catalog, seed: int) -> None:
    """Video queries: the same faults filmed differently."""
    hv = cat.case_by_id[HVAC_VIDEO_CASE]
    for j, question in enumerate((None, "What does this blinking red light mean?")):
        rel = f"eval_media/{q.next_id()}.mp4"

        def hvac_job(rel: str = rel, j: int = j) -> list[tuple[str, bytes]]:
            rng = _rng(seed, "query-video", hv.id, j)
            frames = _hvac_blink_frames(cat, rng, size=(352, 256))
            frames = frames[3 * (j + 1):] + frames[: 3 * (j + 1)]  # start at another point of the blink cycle
            frames, _how = augment.transform_frames(frames, rng)
            return [(rel, _mp4(frames, VIDEO_FPS))]

        q.jobs.append(hvac_job)
        q.add("video", text=question, video=rel, relevant=_relevant(hv), case=hv,
              variant=f"re-rendered, phase-shifted; {augment.CLIP_DESCRIPTION}")
    pc = cat.case_by_id[PUMP_VIDEO_CASE]
    rel = f"eval_media/{q.next_id()}.mp4"

    def pump_job(rel: str = rel) -> list[tuple[str, bytes]]:
        rng = _rng(seed, "query-video", pc.id)
        frames, _how = augment.transform_frames(_pump_frames(cat, rng, phase=1.1, size=(360, 224)), rng)
        return [(rel, _mp4(frames, VIDEO_FPS))]

    q.jobs.append(pump_job)
    q.add("video", text="Pump is making a rattling noise, here's the gauges.", video=rel, relevant=_relevant(pc), case=pc,
          variant=f"re-rendered; {augment.CLIP_DESCRIPTION}")


def _manual_queries(q: _QueryRows, cat: Catalog, seed: int, manual_pages: list[Image.Image]) -> None:
    """Photos of manual pages."""
    for page_no in (2, 4):
        case = cat.case_by_id[cat.manual_pages[page_no - 1].case_id]

        def page_image(_rng: random.Random, page: Image.Image = manual_pages[page_no - 1]) -> Image.Image:
            return page

        rel, how = q.picture(page_image, "phone_photo", (seed, "query-manual", page_no))
        q.add("image+text", text="Found this page in the service binder - which fault is it about and what do I do?",
              image=rel, relevant=_relevant(case), case=case, variant=f"photo of manual page {page_no}; {how}")


def _abstain_queries(q: _QueryRows, cat: Catalog, seed: int) -> None:
    """Out-of-KB questions: the app should say it has no matching case."""
    for text in cat.abstain_text:
        q.add("text", text=text, variant="out of KB")
    for j, oob in enumerate(cat.abstain_images):
        recipe = augment.RECIPES[j % len(augment.RECIPES)]
        rel, how = q.picture(partial(render, "appliance", oob.params), recipe, (seed, "query-abstain", j))
        q.add("image+text" if oob.question else "image", text=oob.question, image=rel, variant=f"out of KB; {how}")


def _eval_queries(cat: Catalog, jobs: list[Job], seed: int, manual_pages: list[Image.Image]) -> list[dict[str, Any]]:
    """The English eval rows (ids q001…, unchanged since the set was published); media generation goes on ``jobs``."""
    q = _QueryRows(jobs)
    _picture_queries(q, cat, seed)
    _text_queries(q, cat)
    _video_queries(q, cat, seed)
    _manual_queries(q, cat, seed, manual_pages)
    _abstain_queries(q, cat, seed)
    assert {c for row in q.rows for c in row["relevant"]} <= set(cat.case_by_id), "eval references an unknown case"
    assert len({c.product_line for c in cat.cases}) == len(cat.product_lines)
    return q.rows


def _eval_queries_zh(cat: Catalog, zh: ZhCatalog, jobs: list[Job], seed: int, manual_pages: list[Image.Image], *,
                     first: int) -> list[dict[str, Any]]:
    """Cross-lingual eval rows, numbered from ``first`` (after the English set, whose ids stay as they were):
    a picture query per Chinese case (Chinese error screens; every third with an English question), the English
    question of each Chinese case, Chinese questions about English cases, and a photo of the Chinese manual page
    with a Chinese question."""
    q = _QueryRows(jobs, first)
    for i, case in enumerate(zh.cases):
        im = case.images[0]
        rel, how = q.picture(partial(render, im.scene, im.params), augment.RECIPES[i % len(augment.RECIPES)],
                             (seed, "query-zh", case.id))
        with_text = i % 3 == 0
        q.add_case("image+text" if with_text else "image", case, f"Chinese case; re-rendered; {how}", image=rel,
                   text=_GENERIC_QUESTIONS[i % len(_GENERIC_QUESTIONS)] if with_text else None)
    for case in zh.cases:
        if case.ask:
            q.add_case("text", case, "English question, Chinese case", text=case.ask)
    for zq in zh.queries:
        q.add_case("text", cat.case_by_id[zq.case_id], "Chinese question, English case", text=zq.text)
    for page_no, mp in enumerate(zh.manual_pages, 1):
        def page_image(_rng: random.Random, page: Image.Image = manual_pages[page_no - 1]) -> Image.Image:
            return page

        rel, how = q.picture(page_image, "phone_photo", (seed, "query-manual-zh", page_no))
        q.add_case("image+text", cat.case_by_id[mp.case_id], f"photo of Chinese manual page {page_no}; {how}", image=rel,
                   text="这页维修手册讲的是哪个故障？应该怎么处理？")
    return q.rows
