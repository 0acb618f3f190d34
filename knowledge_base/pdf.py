"""PDF manuals → page images (pypdfium2), so each page is retrievable, rerankable and shown like a photo.

The embedder, reranker and generator take images, not PDFs; rendering once at import (≈1600 px on the long side,
enough for small print and well inside the 1800-token pixel budget after the processor's resize) keeps every
consumer simple and the stored page image is what the UI shows.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from rag.errors import UserInputError

if TYPE_CHECKING:  # pragma: no cover - pdfium is imported when a PDF is first read
    import pypdfium2 as pdfium

__all__ = ["PdfError", "RenderedPage", "images_to_pdf", "is_pdf", "pdf_page_count", "render_pdf_pages"]

log = logging.getLogger(__name__)

#: Pages whose rendered long side would exceed this many pixels at scale 1 are scaled down, never up past it.
MAX_SCALE = 8.0


class PdfError(UserInputError, ValueError):
    """A PDF (or one of its pages) could not be read; the message names the file and the page."""

    code = "bad_pdf"


@dataclass(frozen=True)
class RenderedPage:
    """One rendered page: PNG bytes plus its 1-based number and pixel size."""

    page: int
    png: bytes
    width: int
    height: int


def is_pdf(head: bytes) -> bool:
    """PDF magic within the first KiB (some writers put junk before ``%PDF-``, as readers tolerate)."""
    return b"%PDF-" in head[:1024]


def _open(src: Path | bytes, name: str) -> pdfium.PdfDocument:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(src) if isinstance(src, Path) else src)
    except pdfium.PdfiumError as e:
        msg = str(e)
        if "password" in msg.lower():
            raise PdfError(f"{name}: the PDF is password-protected; remove the password and import it again") from None
        raise PdfError(f"{name}: cannot be opened as a PDF ({msg})") from None


def pdf_page_count(src: Path | bytes, name: str = "<pdf>") -> int:
    """Number of pages (``PdfError`` if the file is not a readable PDF)."""
    pdf = _open(src, name)
    try:
        return len(pdf)
    finally:
        pdf.close()


def render_pdf_pages(
    src: Path | bytes,
    *,
    name: str = "<pdf>",
    long_side: int = 1600,
    max_pages: int | None = 50,
    pages: list[int] | None = None,
) -> tuple[list[RenderedPage], int]:
    """Render pages to PNG; returns (rendered pages, total pages in the document).

    ``pages`` (1-based) selects pages; otherwise the first ``max_pages`` are rendered (the caller reports the
    rest as skipped, so a 400-page manual cannot silently swamp the index).
    """
    if long_side < 64:
        raise ValueError(f"long_side must be at least 64 px, got {long_side}")
    pdf = _open(src, name)
    try:
        total = len(pdf)
        if total < 1:
            raise PdfError(f"{name}: the PDF has no pages")
        if pages:
            bad = [p for p in pages if not 1 <= p <= total]
            if bad:
                raise PdfError(f"{name}: page {bad[0]} requested but the PDF has {total} page(s)")
            wanted = sorted(set(pages))
        else:
            wanted = list(range(1, (min(total, max_pages) if max_pages else total) + 1))
        out: list[RenderedPage] = []
        for number in wanted:
            out.append(_render_page(pdf, number, name, long_side))
        return out, total
    finally:
        pdf.close()


def _render_page(pdf: pdfium.PdfDocument, number: int, name: str, long_side: int) -> RenderedPage:
    import pypdfium2 as pdfium

    try:
        page = pdf[number - 1]
        try:
            w, h = page.get_size()
            if w <= 0 or h <= 0:
                raise PdfError(f"{name} page {number}: has an empty page box")
            scale = min(MAX_SCALE, long_side / max(w, h))
            image = page.render(scale=scale).to_pil()
        finally:
            page.close()
    except pdfium.PdfiumError as e:
        raise PdfError(f"{name} page {number}: cannot be rendered ({e})") from None
    if image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) / max(1, min(image.size)) > 150:
        raise PdfError(f"{name} page {number}: aspect ratio {image.size[0]}×{image.size[1]} is too extreme to embed")
    buf = io.BytesIO()
    # compress_level 3: ~2× faster than the default with files only slightly larger (text pages compress well).
    image.save(buf, "PNG", compress_level=3)
    return RenderedPage(page=number, png=buf.getvalue(), width=image.size[0], height=image.size[1])


def images_to_pdf(images: list[Image.Image], dest: Path) -> Path:
    """Write images as a multi-page PDF (test fixtures and the benchmark use it)."""
    rgb = [im.convert("RGB") for im in images]
    rgb[0].save(dest, "PDF", save_all=True, append_images=rgb[1:], resolution=72.0)
    return dest
