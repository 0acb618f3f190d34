"""Query images decoded once: the photo of a question, validated and ready for the embedder, reranker and generator.

Lives with the other vision inputs (:mod:`rag.models.vision`) because every entry point that asks a question with a
photo needs it — the chat, the CLI, the pipeline benchmark — not only the UI.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

from rag.config import VisionBudget
from rag.models.vision import VisionInputError, load_image, to_rgb
from rag.validation import InputRejected, check_image_size

#: Longest side ratio the model accepts (transformers refuses above 200).
MAX_ASPECT_RATIO = 200


class QueryImageError(VisionInputError):
    """A query image that cannot be used; the message names the file (base name only) and is shown to the user."""

    code = "bad_query_image"


def display_name(path: str | Path) -> str:
    """The base name only (never a server directory), trimmed for messages."""
    name = Path(str(path)).name
    return name if len(name) <= 60 else name[:57] + "…"


def check_min_side(w: int, h: int, budget: VisionBudget, what: str) -> None:
    """The shared minimum-size rule (:func:`rag.validation.check_image_size`) as a :class:`QueryImageError`."""
    try:
        check_image_size(w, h, budget.min_image_side, what=what)
    except InputRejected as e:
        raise QueryImageError(e.problem + ".", code=e.code, params={"name": what, **e.values}) from None


def load_query_image(src: str | Path | Image.Image, budget: VisionBudget) -> Image.Image:
    """Decode an uploaded image once (validated, EXIF-oriented, RGB) for the embedder, reranker and generator to reuse.

    Handing the models a path would make each decode the file again. The official resize is left to the model
    wrappers (as for the case images), so query and document images go through the same resize code. A JPEG far
    above the pixel budget (a 12 MP phone photo) is decoded at 1/2–1/8 scale in the DCT domain, never below the
    budget, which the official resize then brings to the model size: the same input for a fraction of the decode.
    Raises :class:`QueryImageError`.
    """
    if isinstance(src, Image.Image):  # a crop from the editor
        try:
            return load_image(src, budget)
        except VisionInputError as e:
            raise QueryImageError(f"The cropped region cannot be used: {e}.", code="bad_crop") from e
    path = Path(src)
    name = display_name(path)
    if not path.is_file():
        raise QueryImageError(f"'{name}' is no longer available; please attach it again.", code="image_gone",
                              params={"name": name})
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > budget.max_image_pixels:
                raise QueryImageError(f"'{name}' has {w}x{h} = {w * h:,} pixels, more than the limit of "
                                      f"{budget.max_image_pixels:,}.", code="image_too_many_pixels",
                                      params={"name": name, "width": w, "height": h, "pixels": w * h,
                                              "limit": budget.max_image_pixels})
            check_min_side(w, h, budget, f"'{name}'")
            scale = 1
            while scale < 8 and (w // (scale * 2)) * (h // (scale * 2)) >= budget.max_pixels:
                scale *= 2
            if im.format == "JPEG" and scale > 1:
                im.draft("RGB", (w // scale, h // scale))
            im.load()
            if getattr(im, "is_animated", False):
                im.seek(0)
            ImageOps.exif_transpose(im, in_place=True)
            img = im if im.mode == "RGB" else to_rgb(im)
            ratio = max(img.size) / max(1, min(img.size))
            if ratio > MAX_ASPECT_RATIO:
                raise QueryImageError(f"'{name}' is {img.size[0]}x{img.size[1]}: too elongated for the model (ratio "
                                      f"{ratio:.0f}, limit {MAX_ASPECT_RATIO}).", code="image_too_elongated",
                                      params={"name": name, "width": img.size[0], "height": img.size[1],
                                              "ratio": round(ratio), "limit": MAX_ASPECT_RATIO})
            return img
    except QueryImageError:
        raise
    except VisionInputError as e:
        raise QueryImageError(f"'{name}' cannot be used as an image: {str(e).replace(str(path), name)}",
                              code="unreadable_image", params={"name": name}) from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise QueryImageError(f"'{name}' cannot be used as an image: corrupt or truncated image "
                              f"({type(e).__name__}).", code="unreadable_image", params={"name": name}) from e
