"""Photo-like transforms that turn a clean rendering into what a support engineer actually receives:
a phone photo at an angle, under office lighting, with glare, blur, sensor noise and JPEG compression.

All randomness comes from the ``random.Random`` passed in, so outputs are reproducible.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from knowledge_base.sample.draw import gradient, noise_rgb, texture

_BACKGROUNDS = ((120, 110, 95), (70, 72, 78), (190, 185, 175), (150, 160, 170), (95, 80, 65), (200, 200, 205))


def perspective_coeffs(dst: list[tuple[float, float]], src: list[tuple[float, float]]) -> tuple[float, ...]:
    """Coefficients for ``Image.transform(PERSPECTIVE)``: maps output points ``dst`` to input points ``src``."""
    a = []
    b = []
    for (x, y), (u, v) in zip(dst, src, strict=False):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.extend([u, v])
    sol = np.linalg.solve(np.array(a, dtype=np.float64), np.array(b, dtype=np.float64))
    return tuple(float(c) for c in sol)


def background(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A desk/wall/cabinet-like backdrop: tinted gradient with grain and a soft blur."""
    base = rng.choice(_BACKGROUNDS)
    top = tuple(max(0, min(255, c + rng.randint(-15, 25))) for c in base)
    bottom = tuple(max(0, min(255, c - rng.randint(5, 35))) for c in base)
    bg = gradient(size, top, bottom, horizontal=rng.random() < 0.5)  # type: ignore[arg-type]
    return texture(bg, rng, 6.0)


def place_in_scene(img: Image.Image, rng: random.Random, *, warp: float = 0.08, margin: float = 0.14) -> Image.Image:
    """Put ``img`` on a backdrop as if photographed at an angle (perspective warp + drop shadow)."""
    w, h = img.size
    cw, ch = int(w * (1 + 2 * margin)), int(h * (1 + 2 * margin))
    bg = background((cw, ch), rng)
    mx, my = w * margin, h * margin
    corners = [(mx, my), (mx + w, my), (mx + w, my + h), (mx, my + h)]
    dst = [(x + rng.uniform(-warp, warp) * w, y + rng.uniform(-warp, warp) * h) for x, y in corners]
    src: list[tuple[float, float]] = [(0, 0), (w, 0), (w, h), (0, h)]
    coeffs = perspective_coeffs(dst, src)
    rgba = img.convert("RGBA")
    warped = rgba.transform((cw, ch), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    # drop shadow, computed at quarter resolution (a blur this soft does not need full resolution)
    small = warped.getchannel("A").reduce(4).point(lambda a: int(a * 0.55))
    small = small.transform(small.size, Image.Transform.AFFINE, (1, 0, -2, 0, 1, -3)).filter(ImageFilter.GaussianBlur(2.5))
    shadow_a = small.resize((cw, ch), Image.Resampling.BILINEAR)
    out = Image.composite(Image.new("RGB", (cw, ch), (0, 0, 0)), bg, shadow_a)
    out.paste(warped.convert("RGB"), (0, 0), warped.getchannel("A"))
    return out


def relight(img: Image.Image, rng: random.Random, *, strength: float = 0.35) -> Image.Image:
    """Uneven office lighting: a brightness ramp in a random direction, colour cast and contrast change.

    Built from Pillow primitives (small ramp scaled up, multiply, per-channel lookup tables): fast in C.
    """
    w, h = img.size
    ang = rng.uniform(0, 2 * np.pi)
    n = 32
    xs = (np.arange(n, dtype=np.float32) / n - 0.5)[None, :]
    ys = (np.arange(n, dtype=np.float32) / n - 0.5)[:, None]
    k = 1.0 + strength * 1.6 * (np.cos(ang) * xs + np.sin(ang) * ys)
    kmax = float(k.max())
    ramp = Image.fromarray((k / kmax * 255).astype(np.uint8), "L").resize((w, h), Image.Resampling.BILINEAR)
    out = ImageChops.multiply(img.convert("RGB"), Image.merge("RGB", (ramp, ramp, ramp)))
    gain = kmax * (1.0 + rng.uniform(-0.15, 0.1))
    cast = (rng.uniform(0.92, 1.08), 1.0, rng.uniform(0.88, 1.08))
    contrast = rng.uniform(0.8, 1.1)
    lut: list[int] = []
    for c in cast:
        lut.extend(max(0, min(255, int(round((v * gain * c - 128) * contrast + 128)))) for v in range(256))
    return out.point(lut)


def glare(img: Image.Image, rng: random.Random) -> Image.Image:
    """A soft specular reflection, as from a ceiling light on a glossy screen."""
    w, h = img.size
    mask = Image.new("L", (w, h), 0)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.15, 0.6) * h
    rx, ry = rng.uniform(0.08, 0.18) * w, rng.uniform(0.05, 0.12) * h
    ImageDraw.Draw(mask).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.uniform(70, 120)))
    mask = mask.filter(ImageFilter.GaussianBlur(min(w, h) * 0.05))
    return Image.composite(Image.new("RGB", (w, h), (255, 255, 250)), img, mask)


def sensor_noise(img: Image.Image, rng: random.Random, sigma: float) -> Image.Image:
    """Per-channel sensor grain of standard deviation ``sigma`` (grey levels)."""
    return ImageChops.add(img.convert("RGB"), noise_rgb("high", img.size, sigma, rng, mono=False), 1.0, -128)


def rotate_crop(img: Image.Image, rng: random.Random) -> Image.Image:
    """Hand-held shot: tilted by 5-14 degrees, then cropped to hide the corners."""
    angle = rng.choice((-1, 1)) * rng.uniform(5, 14)
    fill = tuple(int(c) for c in np.asarray(img, np.uint8)[0, 0])
    rot = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    return _crop_window(rot, rng, keep=(0.78, 0.9), place=(0.3, 0.7))


def crop_zoom(img: Image.Image, rng: random.Random) -> Image.Image:
    """Close-up: a 65-80% window of the picture (the part the engineer cared about)."""
    return _crop_window(img, rng, keep=(0.65, 0.8), place=(0.2, 0.8))


def _crop_window(img: Image.Image, rng: random.Random, *, keep: tuple[float, float],
                 place: tuple[float, float]) -> Image.Image:
    """A window of a random ``keep`` share of each side, placed at a random ``place`` share of the free room."""
    w, h = img.size
    k = rng.uniform(*keep)
    cw, ch = int(w * k), int(h * k)
    x0 = int((w - cw) * rng.uniform(*place))
    y0 = int((h - ch) * rng.uniform(*place))
    return img.crop((x0, y0, x0 + cw, y0 + ch))


def rescale(img: Image.Image, rng: random.Random, lo: float = 0.55, hi: float = 0.9) -> Image.Image:
    s = rng.uniform(lo, hi)
    return img.resize((max(32, int(img.width * s)), max(32, int(img.height * s))), Image.Resampling.BILINEAR, reducing_gap=2.0)


def to_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def to_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


#: Named recipes and what differs from the KB picture (recorded as the eval query's ``variant``).
DESCRIPTIONS: dict[str, str] = {
    "phone_photo": "perspective photo on a backdrop, uneven light, blur, sensor noise, JPEG q72-86",
    "tilted_crop": "rotated 5-14 degrees, cropped, rescaled, uneven light, noise, JPEG q75-90",
    "dim_photo": "dark scene, heavy noise, perspective, JPEG q65-80",
    "closeup": "close-up crop (65-80%), upscaled, uneven light, noise, JPEG q78-90",
    "glare_photo": "perspective photo with screen glare, JPEG q75-88",
    "rescaled_jpeg": "downscaled to 50-70% and re-compressed by a messenger, JPEG q55-70",
}
RECIPES = tuple(DESCRIPTIONS)
CLIP_DESCRIPTION = "hand-held phone clip: perspective, darker, sensor noise, smaller frame"


def apply(recipe: str, img: Image.Image, rng: random.Random) -> tuple[bytes, str, str]:
    """Apply a recipe; returns (encoded bytes, file extension, variant description)."""
    # Downscale first, then geometry and photometric effects: everything after runs on fewer pixels.
    if recipe == "phone_photo":
        out = place_in_scene(rescale(img, rng, 0.6, 0.85), rng, warp=rng.uniform(0.05, 0.1))
        out = relight(out, rng, strength=0.3).filter(ImageFilter.GaussianBlur(0.6))
        out = sensor_noise(out, rng, 4.0)
        q = rng.randint(72, 86)
        return to_jpeg(out, q), ".jpg", f"perspective photo, uneven light, blur, noise, JPEG q{q}"
    if recipe == "tilted_crop":
        out = rescale(rotate_crop(img, rng), rng)
        out = sensor_noise(relight(out, rng, strength=0.2), rng, 3.0)
        q = rng.randint(75, 90)
        return to_jpeg(out, q), ".jpg", f"rotated, cropped, rescaled, JPEG q{q}"
    if recipe == "dim_photo":
        out = place_in_scene(rescale(img, rng, 0.55, 0.75), rng, warp=0.06)
        arr = np.asarray(out, np.float32) * rng.uniform(0.45, 0.6)  # poorly lit plant room
        out = sensor_noise(Image.fromarray(arr.astype(np.uint8), "RGB"), rng, 7.0)
        q = rng.randint(65, 80)
        return to_jpeg(out, q), ".jpg", f"dark scene, heavy noise, perspective, JPEG q{q}"
    if recipe == "closeup":
        out = crop_zoom(img, rng)
        out = out.resize((int(out.width * 1.25), int(out.height * 1.25)), Image.Resampling.BICUBIC)
        out = sensor_noise(relight(out, rng, strength=0.2), rng, 3.5)
        q = rng.randint(78, 90)
        return to_jpeg(out, q), ".jpg", f"close-up crop, upscaled, JPEG q{q}"
    if recipe == "glare_photo":
        out = place_in_scene(rescale(img, rng, 0.6, 0.85), rng, warp=0.07)
        out = glare(relight(out, rng, strength=0.25), rng)
        q = rng.randint(75, 88)
        return to_jpeg(out, q), ".jpg", f"perspective photo with screen glare, JPEG q{q}"
    if recipe == "rescaled_jpeg":
        out = rescale(img, rng, 0.5, 0.7)
        q = rng.randint(55, 70)
        return to_jpeg(out, q), ".jpg", f"downscaled screenshot re-compressed by a messenger, JPEG q{q}"
    raise ValueError(f"unknown recipe {recipe!r}")


def transform_frames(frames: list[Image.Image], rng: random.Random) -> tuple[list[Image.Image], str]:
    """The same perspective/lighting for every frame of a clip (a phone held still), plus per-frame noise.

    The warp renders straight to the output size (scaled coefficients), so each frame costs one transform.
    """
    w, h = frames[0].size
    warp = rng.uniform(0.04, 0.08)
    margin = 0.1
    scale = rng.uniform(0.75, 0.9)
    # width a multiple of 64 and height of 16: encoders then never read outside the frame buffers
    cw, ch = int(w * (1 + 2 * margin) * scale) // 64 * 64, int(h * (1 + 2 * margin) * scale) // 16 * 16
    bg = background((cw, ch), rng)
    mx, my = w * margin, h * margin
    corners = [(mx, my), (mx + w, my), (mx + w, my + h), (mx, my + h)]
    dst = [((x + rng.uniform(-warp, warp) * w) * scale, (y + rng.uniform(-warp, warp) * h) * scale) for x, y in corners]
    coeffs = perspective_coeffs(dst, [(0, 0), (w, 0), (w, h), (0, h)])
    gain = rng.uniform(0.7, 0.9)
    lut = [int(v * gain) for v in range(256)] * 3
    mask = Image.new("L", (w, h), 255).transform((cw, ch), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    out = []
    for f in frames:
        warped = f.convert("RGB").transform((cw, ch), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
        comp = bg.copy()
        comp.paste(warped, (0, 0), mask)
        out.append(sensor_noise(comp.point(lut), rng, 3.0))
    return out, f"hand-held phone clip: perspective, darker, noise, {cw}x{ch}"
