"""Upload: chat attachments (image, video, PDF, cropped region) into query media, with clear errors for bad files.

PDF uploads: the page chosen in the "PDF page" box (default 1) is rendered at ``pdf_dpi`` and used as a query
image; asking for a page the document does not have is an error that says how many pages it has. One page only,
on purpose: every query image costs hundreds of model tokens, and a support question is about one page.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from rag.config import VisionBudget
from rag.errors import UserInputError
from rag.models.query_image import QueryImageError, display_name, load_query_image
from rag.validation import InputRejected, check_file, check_image_size
from ui.i18n import tr

logger = logging.getLogger(__name__)

Kind = Literal["image", "video", "pdf"]


class UploadError(UserInputError, ValueError):
    """A file the chat cannot use; the message is shown to the user as is."""

    code = "bad_upload"


@dataclass
class QueryMedia:
    """Media of one chat message, as local file paths the pipeline can read."""

    images: list[str] = field(default_factory=list)
    video: str | None = None
    notes: list[str] = field(default_factory=list)
    #: path -> the image decoded once and resized to the model budget (what the models get; see load_query_image)
    decoded: dict[str, Image.Image] = field(default_factory=dict, repr=False)

    @property
    def empty(self) -> bool:
        return not self.images and self.video is None

    def to_state(self) -> dict[str, Any]:
        return {"images": list(self.images), "video": self.video}


def sniff(path: Path, budget: VisionBudget) -> Kind:
    """Kind by content (the shared validation layer: magic bytes, never the name), with the size caps applied."""
    try:
        kind, _fmt = check_file(path, ("image", "video", "pdf"),
                                budget.limits(), where=f"'{display_name(path)}'")
    except InputRejected as e:
        if e.code == "wrong_type":
            raise UploadError(f"'{display_name(path)}' is not a supported file. Attach a photo or screenshot "
                              "(PNG, JPEG, WebP), a short video (MP4, WebM, MOV) or a PDF.", code="unsupported_upload",
                              params={"name": display_name(path)}) from None
        raise UploadError(str(e), code=e.code, params=e.params) from None
    return kind  # type: ignore[return-value]


def check_video(path: Path, budget: VisionBudget) -> None:
    """Open the container and check there is a video stream of acceptable length (no full decode)."""
    import av

    try:
        with av.open(str(path)) as c:
            streams = [s for s in c.streams if s.type == "video"]
            if not streams:
                raise UploadError(f"'{display_name(path)}' has no video stream.", code="no_video_stream",
                                  params={"name": display_name(path)})
            dur = float(c.duration / 1_000_000) if c.duration else None
            w, h = streams[0].codec_context.width, streams[0].codec_context.height
    except UploadError:
        raise
    except Exception as e:  # PyAV raises many types for broken files
        raise UploadError(f"'{display_name(path)}' is not a readable video ({type(e).__name__}).",
                          code="unreadable_video", params={"name": display_name(path)}) from e
    if dur is not None and dur > budget.max_video_seconds:
        raise UploadError(f"'{display_name(path)}' is {dur:.0f} s long; the limit is {budget.max_video_seconds:.0f} s. "
                          "Trim it to the moment that shows the fault.", code="video_too_long",
                          params={"name": display_name(path), "seconds": round(dur), "limit": round(budget.max_video_seconds)})
    if w and h:
        name = display_name(path)
        try:
            check_image_size(w, h, budget.min_image_side, what=f"each frame of '{name}'")
        except InputRejected as e:  # the rule's values kept: the chat shows it in the user's language
            raise UploadError(e.problem + ".", code="video_frames_too_small", params={"name": name, **e.values}) from None


def render_pdf_page(path: Path, page: int, out_dir: Path, *, dpi: int = 150, max_pixels: int = 12_000_000) -> tuple[str, int]:
    """Render one 1-based page to PNG under ``out_dir``; returns (png path, page count)."""
    import pypdfium2 as pdfium

    name = display_name(path)
    try:
        pdf = pdfium.PdfDocument(str(path))
    except Exception as e:  # PdfiumError: encrypted, corrupt...
        raise UploadError(f"'{name}' is not a readable PDF ({e}).", code="unreadable_pdf", params={"name": name}) from e
    try:
        n = len(pdf)
        if n == 0:
            raise UploadError(f"'{name}' has no pages.", code="pdf_no_pages", params={"name": name})
        if not 1 <= page <= n:
            raise UploadError(f"'{name}' has {n} page{'s' if n != 1 else ''}; page {page} does not exist. "
                              f"Set 'PDF page' to a number from 1 to {n}.", code="pdf_page_missing",
                              params={"name": name, "pages": n, "page": page})
        pg = pdf[page - 1]
        w_pt, h_pt = pg.get_size()
        scale = dpi / 72
        if w_pt * h_pt * scale * scale > max_pixels:  # huge pages (posters, drawings): cap the bitmap
            scale = (max_pixels / (w_pt * h_pt)) ** 0.5
        img = pg.render(scale=scale).to_pil().convert("RGB")
    finally:
        pdf.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"pdf-{uuid.uuid4().hex}-p{page}.png"
    img.save(out)
    return str(out), n


def save_image(img: Image.Image, out_dir: Path, prefix: str = "crop") -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{prefix}-{uuid.uuid4().hex}.png"
    img.convert("RGB").save(out)
    return str(out)


def editor_image(value: Any, *, roots: list[Path] | None = None) -> Image.Image | None:
    """The cropped/edited result of a ``gr.ImageEditor`` value (its composite), or None when it is empty.

    A value given as a file path (composite or background) is confined like a message file: with ``roots`` (the web
    app passes :func:`upload_roots`) a path outside them is refused before it is opened.
    """
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        comp = value.get("composite")
        if comp is None:
            comp = value.get("background")
        if isinstance(comp, dict):  # a FileData-shaped value
            comp = comp.get("path")
        if isinstance(comp, Image.Image):
            return comp
        if isinstance(comp, (str, Path)) and str(comp):
            path = _confined(Path(comp), roots, "The image to crop")
            if not path.is_file():
                raise UploadError("The image to crop did not arrive; please upload it again.")
            try:
                return Image.open(path)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                raise UploadError(f"The image to crop cannot be used: not a readable image ({type(e).__name__}).") from e
    return None


def _confined(path: Path, roots: list[Path] | None, what: str) -> Path:
    """``path`` if it lies inside one of ``roots`` (links resolved), else :class:`UploadError`; no check for None."""
    if roots is not None and not any(path.resolve().is_relative_to(r) for r in roots):
        logger.warning("refused a chat file outside the upload folders: %s", path)
        raise UploadError(f"{what} is not accepted: only files uploaded in this chat can be used.")
    return path


def _decode(path: str | Path, budget: VisionBudget) -> Image.Image:
    """:func:`rag.models.query_image.load_query_image`, refusals as :class:`UploadError` (this module's contract)."""
    try:
        return load_query_image(path, budget)
    except QueryImageError as e:  # keep the rule's code and values: the chat shows it in the user's language
        raise UploadError(str(e), code=e.code, params=e.params) from e


def upload_roots(*extra: Path) -> list[Path]:
    """Folders a chat file may come from: Gradio's upload cache plus ``extra`` (the app's derived-upload dir)."""
    from gradio.utils import get_upload_folder

    return [Path(get_upload_folder()).resolve(), *(Path(e).resolve() for e in extra)]


def prepare_uploads(files: list[Any], *, pdf_page: int, out_dir: Path, budget: VisionBudget, dpi: int = 150,
                    roots: list[Path] | None = None) -> QueryMedia:
    """Validate and convert the files of one message. Raises :class:`UploadError` with a user-facing message.

    ``roots`` (the web app passes :func:`upload_roots`): a path outside them is refused before it is touched, so a
    crafted request can never make the server read its own files. ``None`` (the CLI's local files): no confinement.
    """
    media = QueryMedia()
    for f in files or []:
        raw = f.get("path") if isinstance(f, dict) else f
        if not raw:
            continue
        path = Path(str(raw))
        name = display_name(path)
        _confined(path, roots, f"'{name}'")
        if not path.is_file():
            raise UploadError(f"'{name}' did not arrive; please attach it again.")
        kind = sniff(path, budget)
        if kind == "image":
            media.decoded[str(path)] = _decode(path, budget)  # also the validation: a full decode
            media.images.append(str(path))
        elif kind == "pdf":
            png, n = render_pdf_page(path, pdf_page, out_dir, dpi=dpi)
            try:
                media.decoded[png] = _decode(png, budget)
            except UploadError as e:  # name the PDF page, not the temporary rendering
                raise UploadError(str(e).replace(display_name(png), f"{name} page {pdf_page}")) from None
            media.images.append(png)
            media.notes.append(tr("ui.chat.pdf_note", name=name, page=pdf_page, pages=n))
        elif kind == "video":
            if media.video is not None:
                raise UploadError("Attach at most one video per message.")
            check_video(path, budget)
            media.video = str(path)
    return media
