"""Vision inputs shared by the embedder, reranker and generator.

Images and videos are loaded *safely* here (size and pixel caps before decoding, EXIF orientation, odd modes) and then
resized exactly like the official Qwen3-VL code does through qwen-vl-utils, so real weights see what they were trained
on. Every failure raises :class:`VisionInputError` naming the input and the problem.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")

from qwen_vl_utils import vision_process as qvu  # noqa: E402  (reader choice must be set before import)

from rag.config import VisionBudget  # noqa: E402
from rag.errors import UserInputError  # noqa: E402
from rag.validation import InputRejected, check_file, check_image_size, to_8bit  # noqa: E402
from rag.validation import Kind as FileKind  # noqa: E402

logger = logging.getLogger(__name__)

#: Qwen3-VL: 16-pixel patches merged 2×2, so sizes snap to multiples of 32.
IMAGE_PATCH_SIZE = 16
FACTOR = IMAGE_PATCH_SIZE * 2

ImageSource = Union[str, Path, bytes, Image.Image]
VideoSource = Union[str, Path, list[ImageSource]]  # a path, or the frames already decoded


class VisionInputError(UserInputError, ValueError):
    """An image or video that cannot be used; the message names the input and what is wrong."""

    code = "bad_media"


def describe(src: Any) -> str:
    """A short human name for an input, for error messages."""
    if isinstance(src, (str, Path)):
        return f"'{src}'"
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.size[0]}x{src.size[1]} {src.mode}>"
    if isinstance(src, list):
        return f"<list of {len(src)} frames>"
    return f"<{type(src).__name__}>"


def _check_file(path: Path, budget: VisionBudget, kind: str) -> None:
    """Exists, regular, within the size cap, and really an image/video by content (the shared validation layer)."""
    allowed: tuple[FileKind] = ("image",) if kind == "image" else ("video",)
    try:
        check_file(path, allowed, budget.limits(), where=f"'{path}'")
    except InputRejected as e:
        raise VisionInputError(f"{e.problem}: '{path}'") from e


def _check_min_side(w: int, h: int, budget: VisionBudget, what: str) -> None:
    """The shared minimum-size rule (``rag.validation.check_image_size``) as a :class:`VisionInputError`."""
    try:
        check_image_size(w, h, budget.min_image_side, what=what)
    except InputRejected as e:
        raise VisionInputError(e.problem) from e


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white (as qwen-vl-utils does) and 16-bit/CMYK/palette modes handled."""
    img = to_8bit(img)  # the shared rule (thumbnails use it too)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("LA", "PA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.split()[3])
        return background
    return img if img.mode == "RGB" else img.convert("RGB")  # no copy of an RGB image (a phone photo costs ms)


def _open_image(src: str | Path | bytes | bytearray, budget: VisionBudget, name: str) -> Image.Image:
    """Decode a path or bytes with the file-size and pixel caps checked before the pixels are read."""
    if isinstance(src, (str, Path)):
        path = Path(str(src).removeprefix("file://"))
        _check_file(path, budget, "image")
        data: str | io.BytesIO = str(path)
    elif isinstance(src, (bytes, bytearray)):
        if len(src) == 0:
            raise VisionInputError("image is empty (0 bytes)")
        if len(src) > budget.max_file_bytes:
            raise VisionInputError(f"image too large: {len(src) / 1e6:.1f} MB > {budget.max_file_bytes / 1e6:.0f} MB")
        data = io.BytesIO(src)
    else:
        raise VisionInputError(f"unsupported image input type {type(src).__name__}: give a path, bytes or PIL image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(data)
            w, h = img.size
            if w * h > budget.max_image_pixels:
                raise VisionInputError(
                    f"image {name} has {w}x{h} = {w * h:,} pixels, more than the limit of "
                    f"{budget.max_image_pixels:,} (possible decompression bomb)"
                )
            img.load()
    except VisionInputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise VisionInputError(f"not a readable image: {name} ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise VisionInputError(f"corrupt or truncated image: {name} ({e})") from e
    return img


def load_image(src: ImageSource, budget: VisionBudget | None = None) -> Image.Image:
    """Open an image from a path, bytes or PIL image: size/pixel caps, first frame, EXIF orientation, RGB."""
    budget = budget or VisionBudget()
    name = describe(src)
    img = src if isinstance(src, Image.Image) else _open_image(src, budget, name)
    w, h = img.size
    if w == 0 or h == 0:
        raise VisionInputError(f"image {name} has zero size")
    _check_min_side(w, h, budget, f"image {name}")
    if w * h > budget.max_image_pixels:
        raise VisionInputError(f"image {name} has {w * h:,} pixels, more than the limit of {budget.max_image_pixels:,}")
    if getattr(img, "is_animated", False):
        logger.warning("image %s is animated (%d frames): only the first frame is used", name, getattr(img, "n_frames", 0))
        img.seek(0)
    try:
        if img.getexif().get(0x0112, 1) != 1:  # exif_transpose copies even when there is nothing to turn
            img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the picture unusable
        logger.debug("ignoring unreadable EXIF in %s", name)
    ratio = max(w, h) / max(1, min(w, h))
    if ratio > qvu.MAX_RATIO:
        raise VisionInputError(f"image {name} is {w}x{h}: aspect ratio {ratio:.0f} exceeds the model's limit of {qvu.MAX_RATIO}")
    return to_rgb(img)


def resize_image(img: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Resize like the official code (qwen-vl-utils ``fetch_image`` with ``image_patch_size=16``)."""
    # qwen_vl_utils ships no types: fetch_image returns the resized PIL image
    resized: Image.Image = qvu.fetch_image({"image": img, "min_pixels": min_pixels, "max_pixels": max_pixels},
                                           image_patch_size=IMAGE_PATCH_SIZE)
    return resized


def prepare_image(src: ImageSource, budget: VisionBudget | None = None) -> Image.Image:
    """Load + official resize: the image exactly as the model will see it."""
    budget = budget or VisionBudget()
    img = load_image(src, budget)
    try:
        return resize_image(img, budget.min_pixels, budget.max_pixels)
    except ValueError as e:
        raise VisionInputError(f"image {describe(src)} cannot be resized for the model: {e}") from e


@dataclass
class PreparedVideo:
    """Frames (T, C, H, W float, resized) plus the metadata the Qwen3-VL processor needs for timestamps."""

    frames: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)


def _decode_decord(path: str) -> tuple[Any, int, float]:
    import decord

    vr = decord.VideoReader(path)
    return vr, len(vr), float(vr.get_avg_fps())


def _decode_pyav(path: str, max_frames_decoded: int = 10_000) -> tuple[list[np.ndarray], int, float]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 24)
        frames = []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= max_frames_decoded:
                break
    return frames, len(frames), fps


def _frame_size(path: str) -> tuple[int, int]:
    """(width, height) of a video's frames from its header (no decoding); (0, 0) when the header does not say."""
    import av

    try:
        with av.open(path) as c:
            cc = c.streams.video[0].codec_context
            return int(cc.width or 0), int(cc.height or 0)
    except Exception:  # noqa: BLE001 - decord read it; the decoded frames are checked by the caller's resize anyway
        return 0, 0


def read_video_frames(path: str, fps: float, max_frames: int, budget: VisionBudget) -> tuple[torch.Tensor, dict[str, Any]]:
    """Decode and sample frames like qwen-vl-utils' decord reader (decord first, PyAV as fallback).

    A video shorter than two frames cannot be a Qwen3-VL video (temporal patch 2): callers treat it as an image.
    """
    ele = {"video": path, "fps": fps, "max_frames": max_frames}
    try:
        reader, total, video_fps = _decode_decord(path)
        backend = "decord"
    except Exception as e_decord:  # noqa: BLE001 - decord cannot read some containers; PyAV reads nearly everything
        try:
            reader, total, video_fps = _decode_pyav(path)
            backend = "pyav"
        except Exception as e_av:
            raise VisionInputError(f"cannot decode video '{path}': {e_av} (decord: {e_decord})") from e_av
    if total < 1 or video_fps <= 0:
        raise VisionInputError(f"video '{path}' has no decodable frames")
    duration = total / video_fps
    if total > budget.max_video_frames:
        raise VisionInputError(f"video '{path}' has {total:,} frames, more than the limit of {budget.max_video_frames:,}")
    if duration > budget.max_video_seconds:
        raise VisionInputError(f"video '{path}' lasts {duration:.0f} s, longer than the limit of {budget.max_video_seconds:.0f} s")
    if total < 2:
        idx = [0]
    else:
        start, end, total_sel = qvu.calculate_video_frame_range(ele, total, video_fps)
        try:
            nframes = qvu.smart_nframes(ele, total_frames=total_sel, video_fps=video_fps)
        except ValueError as e:
            raise VisionInputError(f"video '{path}': {e}") from e
        idx = torch.linspace(start, end, nframes).round().long().tolist()
    w, h = _frame_size(path) if backend == "decord" else reader[0].shape[1::-1]
    if w and h:  # before decoding the batch: decoders can fail on frames this small, with a useless message
        _check_min_side(w, h, budget, f"video '{path}': each frame")
    if backend == "decord":
        arr = reader.get_batch(idx).asnumpy()
    else:
        arr = np.stack([reader[i] for i in idx])
    video = torch.tensor(arr).permute(0, 3, 1, 2)
    meta = dict(fps=video_fps, frames_indices=idx, total_num_frames=total, video_backend=backend)
    return video, meta


def _resize_video(video: torch.Tensor, budget: VisionBudget) -> torch.Tensor:
    """qwen-vl-utils' per-frame budget: min 128 tokens, max min(frame cap, total/n·2).

    The official code passes the total budget for frame lists only; for a video *file* it leaves qwen-vl-utils'
    128k-token default, so a file with n > 20 sampled frames keeps frames up to 768·32² pixels where the total budget
    allows 20·768/n·32², and 64 such frames need 24k tokens, beyond max_length. Files keep the total budget here;
    within it both give the same frames (the tests compare with an independent reference).
    """
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    nframes, _, height, width = video.shape
    min_pixels = qvu.VIDEO_MIN_TOKEN_NUM * FACTOR * FACTOR
    max_pixels = max(min(budget.video_frame_max_pixels, budget.video_total_pixels / nframes * qvu.FRAME_FACTOR), int(min_pixels * 1.05))
    h, w = qvu.smart_resize(height, width, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    # torchvision ships no types: resize returns a tensor of the input's dtype
    resized: torch.Tensor = transforms.functional.resize(video, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return resized.float()


def prepare_video(src: VideoSource, budget: VisionBudget | None = None) -> PreparedVideo | Image.Image:
    """A video as the model will see it; a single-frame video comes back as an image (the model needs ≥2 frames)."""
    budget = budget or VisionBudget()
    if isinstance(src, (list, tuple)):
        if not src:
            raise VisionInputError("video frame list is empty")
        frames = list(src)
        if len(frames) > budget.video_max_frames:  # official: evenly spaced subsample
            ids = np.linspace(0, len(frames) - 1, budget.video_max_frames, dtype=int).tolist()
            frames = [frames[i] for i in ids]
        try:
            pil = [load_image(f, budget) for f in frames]
        except VisionInputError as e:
            raise VisionInputError(f"video frame list: {e}") from e
        if len(pil) == 1:
            return resize_image(pil[0], budget.min_pixels, budget.max_pixels)
        # qwen-vl-utils first snaps each frame with factor 2·32 (it passes the merged factor as the patch size);
        # repeat that so frame lists give the official pixels.
        pil = [qvu.fetch_image({"image": im}, image_patch_size=FACTOR) for im in pil]
        if len({im.size for im in pil}) > 1:
            pil = [im.resize(pil[0].size) for im in pil]
        if len(pil) % qvu.FRAME_FACTOR:
            pil.append(pil[-1])
        video = torch.stack([torch.from_numpy(np.array(im).transpose(2, 0, 1)) for im in pil])
        sample_fps = 2.0
        meta = dict(fps=sample_fps, frames_indices=list(range(len(pil))), total_num_frames=len(pil))
    elif isinstance(src, (str, Path)):
        path = Path(str(src).removeprefix("file://"))
        _check_file(path, budget, "video")
        video, meta = read_video_frames(str(path), budget.video_fps, budget.video_max_frames, budget)
        if video.shape[0] < 2:
            logger.info("video '%s' has a single frame: using it as an image", path)
            img = Image.fromarray(video[0].permute(1, 2, 0).numpy())
            return resize_image(img, budget.min_pixels, budget.max_pixels)
    else:
        raise VisionInputError(f"unsupported video input {describe(src)}: give a file path or a list of frames")
    return PreparedVideo(frames=_resize_video(video, budget), metadata=meta)
