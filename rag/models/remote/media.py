"""Images and videos as OpenAI-style content parts with data URLs, in the official Qwen3-VL item layout.

Images are loaded and resized *here*, with the same safety caps and official pixel budget as the local models
(:func:`rag.models.vision.prepare_image`), then sent losslessly (PNG by default). A server whose processor budget
contains ours leaves them untouched, so it sees exactly the pixels the local model would: that is what makes local and
remote vectors/scores interchangeable, and it keeps uploads at most ≈1.8 MP per image.

Videos are sent as the original clip (``video_url`` with a ``data:video/...`` URL; the server samples frames and
knows their timestamps) after a local decode that validates the clip and turns one-frame clips into an image, like
the local path does (Qwen3-VL needs two frames per temporal patch). Frame lists use vLLM's multi-frame
``data:video/jpeg;base64,<frame>,<frame>…`` form. ``frames`` mode sends the locally sampled frames as images instead,
for servers without video input (costlier in tokens and without timestamps).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from PIL import Image

from rag.config import VisionBudget
from rag.models.encoding import Item, as_list, has_input, videos_of
from rag.models.vision import PreparedVideo, VisionInputError, describe, load_image, prepare_image, prepare_video

logger = logging.getLogger(__name__)

ImageFormat = Literal["png", "jpeg"]
VideoMode = Literal["video_url", "frames"]

VIDEO_MIME = {
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
    ".mkv": "video/x-matroska", ".avi": "video/x-msvideo", ".mpg": "video/mpeg", ".mpeg": "video/mpeg",
    ".gif": "image/gif",
}

Part = dict[str, Any]  # one OpenAI content part, JSON as sent (text, image_url {url}, video_url {url}, ...)


class WireMessage(TypedDict):
    """One OpenAI-style chat message as sent to the pooling endpoints."""

    role: Literal["system", "user", "assistant"]
    content: list[Part]


def text_part(text: str) -> Part:
    return {"type": "text", "text": text}


def encode_pil(img: Image.Image, fmt: ImageFormat = "png") -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)  # internal network: speed over size
    else:
        img.convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _check_size(n: int, max_bytes: int, what: str) -> None:
    if n > max_bytes:
        raise VisionInputError(
            f"{what} is {n / 1e6:.1f} MB, more than the {max_bytes / 1e6:.0f} MB a model server request may carry "
            "(RAGVQA_REMOTE_MAX_UPLOAD_MB); send a shorter clip or a smaller image"
        )


def image_part_from_pil(img: Image.Image, fmt: ImageFormat = "png", max_bytes: int = 64 << 20) -> Part:
    data = encode_pil(img, fmt)
    _check_size(len(data), max_bytes, f"image {describe(img)}")
    return {"type": "image_url", "image_url": {"url": data_url(data, f"image/{fmt}")}}


def image_part(src: Any, budget: VisionBudget, fmt: ImageFormat = "png", max_bytes: int = 64 << 20) -> Part:
    """An image as the model will see it (safety caps, EXIF, official resize), as an ``image_url`` data URL."""
    return image_part_from_pil(prepare_image(src, budget), fmt, max_bytes)


def _frames_to_pil(video: PreparedVideo) -> list[Image.Image]:
    arr = video.frames.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(f)) for f in arr]


def video_parts(src: Any, budget: VisionBudget, mode: VideoMode = "video_url", fmt: ImageFormat = "png",
                max_bytes: int = 64 << 20) -> list[Part]:
    """Content parts for one video (a path or a list of frames); one ``image_url`` part for a one-frame clip."""
    prepared = prepare_video(src, budget)  # validates the clip, same caps and sampling as the local models
    if isinstance(prepared, Image.Image):
        return [image_part_from_pil(prepared, fmt, max_bytes)]
    if mode == "frames":
        return [image_part_from_pil(f, fmt, max_bytes) for f in _frames_to_pil(prepared)]
    if isinstance(src, (list, tuple)):
        frames = list(src)
        if len(frames) > budget.video_max_frames:  # the local path's even subsample
            frames = [frames[i] for i in np.linspace(0, len(frames) - 1, budget.video_max_frames, dtype=int)]
        encoded = [base64.b64encode(encode_pil(load_image(f, budget), "jpeg")).decode("ascii") for f in frames]
        _check_size(sum(len(e) for e in encoded) * 3 // 4, max_bytes, f"video {describe(src)}")
        return [{"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(encoded)}}]
    path = Path(str(src).removeprefix("file://"))
    _check_size(path.stat().st_size, max_bytes, f"video '{path}'")
    mime = VIDEO_MIME.get(path.suffix.lower(), "video/mp4")
    return [{"type": "video_url", "video_url": {"url": data_url(path.read_bytes(), mime)}}]


def item_parts(item: Item, budget: VisionBudget, fmt: ImageFormat = "png", max_bytes: int = 64 << 20) -> list[Part]:
    """An embedder/reranker item in the official order: all videos, then all images, then all texts.

    A one-frame video becomes an image placed before the item's own images, exactly as the local encoder does;
    an item without any input is the text ``"NULL"``.
    """
    if not has_input(item):
        return [text_part("NULL")]
    parts: list[Part] = []
    images: list[Part] = []
    for v in videos_of(item):
        vp = video_parts(v, budget, "video_url", fmt, max_bytes)
        (images if vp[0]["type"] == "image_url" else parts).extend(vp)
    for img in as_list(item.get("image")):
        images.append(image_part(img, budget, fmt, max_bytes))
    parts.extend(images)
    for txt in as_list(item.get("text")):
        if not isinstance(txt, str):
            raise VisionInputError(f"text must be a string, got {type(txt).__name__}")
        parts.append(text_part(txt))
    return parts


def decode_data_url(url: str) -> tuple[str, bytes]:
    """``data:<mime>;base64,<payload>`` → (mime, bytes); raises ValueError for anything else."""
    if not url.startswith("data:") or ";base64," not in url:
        raise ValueError(f"not a base64 data URL: {url[:40]!r}")
    head, payload = url[5:].split(";base64,", 1)
    try:
        return head, base64.b64decode(payload, validate=True)
    except binascii.Error as e:
        raise ValueError(f"invalid base64 in data URL ({e})") from e


__all__ = [
    "VIDEO_MIME",
    "data_url",
    "decode_data_url",
    "encode_pil",
    "image_part",
    "image_part_from_pil",
    "item_parts",
    "text_part",
    "video_parts",
]
