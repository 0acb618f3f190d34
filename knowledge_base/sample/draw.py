"""Drawing primitives for the sample KB: fonts, plastic panels, LEDs, character LCDs, 7-segment displays,
dial gauges and icons.  Everything is pure Pillow/numpy and deterministic for a given ``random.Random``.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageOps

from knowledge_base.sample.glyphs import FONT_5X7, SEVEN_SEG

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]


_local = threading.local()


#: CJK fonts looked for, in order (Debian: fonts-wqy-zenhei, fonts-noto-cjk); ``RAGVQA_CJK_FONT`` names another.
CJK_FONT_PATHS = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
)
_CJK = re.compile("[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]")


class FontMissingError(RuntimeError):
    """Text with CJK characters needs a CJK font and none is installed."""


def cjk_font_path() -> Path:
    """The CJK font file: ``RAGVQA_CJK_FONT``, else the first of :data:`CJK_FONT_PATHS` that exists."""
    env = os.environ.get("RAGVQA_CJK_FONT")
    for cand in ([env] if env else []) + list(CJK_FONT_PATHS):
        if Path(cand).is_file():
            return Path(cand)
    raise FontMissingError("drawing Chinese text needs a CJK font: `apt-get install fonts-wqy-zenhei` (the README "
                           "set-up does) or set RAGVQA_CJK_FONT to a .ttf/.ttc/.otf file")


def has_cjk(s: str) -> bool:
    return bool(_CJK.search(s))


def font(size: int, cjk: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font (no system fonts: identical output on every machine); for text with CJK
    characters (``cjk``), the installed CJK font (:func:`cjk_font_path`; its output depends on that font's version).

    Cached per thread: a FreeType face must not be used by two threads at once.
    """
    cache: dict[tuple[int, bool], ImageFont.FreeTypeFont | ImageFont.ImageFont] = _local.__dict__.setdefault("fonts", {})
    f = cache.get((size, cjk))
    if f is None:
        f = cache[(size, cjk)] = (ImageFont.truetype(str(cjk_font_path()), size=size) if cjk
                                  else ImageFont.load_default(size=size))
    return f


def text(
    d: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    s: str,
    size: int,
    fill: RGB | str = (20, 20, 20),
    anchor: str = "la",
    bold: bool = False,
) -> None:
    """Draw text; ``bold`` fakes a heavier weight with a thin stroke in the same colour."""
    d.text(xy, s, font=font(size, has_cjk(s)), fill=fill, anchor=anchor, stroke_width=1 if bold else 0,
           stroke_fill=fill)


def text_width(s: str, size: int) -> float:
    return font(size, has_cjk(s)).getlength(s)


def _units(para: str) -> list[tuple[str, str]]:
    """(separator, unit) pieces of a line: Latin words joined by spaces, each CJK character a unit of its own
    (Chinese breaks between any two characters)."""
    out: list[tuple[str, str]] = []
    for word in para.split():
        pieces = re.findall(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]|[^\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]+", word)
        out += [(" " if i == 0 else "", p) for i, p in enumerate(pieces)]
    return out


def wrap(s: str, size: int, width: float) -> list[str]:
    """Greedy wrap to a pixel width: at spaces, and between CJK characters."""
    out: list[str] = []
    for para in s.split("\n"):
        line = ""
        for sep, unit in _units(para):
            cand = (line + sep + unit) if line else unit
            if text_width(cand, size) <= width or not line:
                line = cand
            else:
                out.append(line)
                line = unit
        out.append(line)
    return out


def shade(c: RGB, k: float) -> RGB:
    """Scale a colour (k < 1 darker, k > 1 lighter), clipped."""
    return tuple(max(0, min(255, int(v * k))) for v in c)  # type: ignore[return-value]


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b, strict=False))  # type: ignore[return-value]


def jitter(c: RGB, rng: random.Random, amount: int = 8) -> RGB:
    """A slightly different shade (incidental variation between renderings)."""
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in c)  # type: ignore[return-value]


def gradient(size: tuple[int, int], top: RGB, bottom: RGB, *, horizontal: bool = False) -> Image.Image:
    """A linear gradient image (used for plastic, walls and metal); built by Pillow in C."""
    w, h = size
    ramp = Image.linear_gradient("L")
    if horizontal:
        ramp = ramp.transpose(Image.Transpose.ROTATE_90).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return ImageOps.colorize(ramp.resize((w, h), Image.Resampling.BILINEAR), black=top, white=bottom)


NOISE_SIZE = 1536


@lru_cache(maxsize=2)
def _noise_field(kind: str) -> np.ndarray:
    """A fixed unit-variance noise field, generated once: ``low`` = smooth blotches (paint, plastic),
    ``high`` = per-pixel sensor grain.  Callers crop it at an rng-chosen offset: different noise per picture
    at a fraction of the cost of fresh samples (and smooth noise keeps PNGs small).
    """
    g = np.random.default_rng(20240101 if kind == "low" else 20240102)
    if kind == "low":
        small = Image.fromarray(g.normal(0.0, 1.0, (NOISE_SIZE // 6, NOISE_SIZE // 6)).astype(np.float32), "F")
        return np.asarray(small.resize((NOISE_SIZE, NOISE_SIZE), Image.Resampling.BILINEAR), np.float32) * 1.8
    return g.normal(0.0, 1.0, (NOISE_SIZE, NOISE_SIZE)).astype(np.float32)


@lru_cache(maxsize=16)
def _noise_image(kind: str, sigma: float) -> Image.Image:
    arr = np.clip(_noise_field(kind) * sigma + 128.0, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L")


def noise_rgb(kind: str, size: tuple[int, int], sigma: float, rng: random.Random, *, mono: bool = True) -> Image.Image:
    """An RGB noise image centred on 128 (add it with ``ImageChops.add(img, n, 1, -128)``).

    ``mono`` uses the same noise in all channels (luminance); otherwise each channel gets its own window.
    """
    src = _noise_image(kind, round(sigma * 2) / 2)
    w, h = size

    def window() -> Image.Image:
        if w <= NOISE_SIZE and h <= NOISE_SIZE:
            x0, y0 = rng.randint(0, NOISE_SIZE - w), rng.randint(0, NOISE_SIZE - h)
            return src.crop((x0, y0, x0 + w, y0 + h))
        tiled = Image.new("L", (w, h))
        for ty in range(0, h, NOISE_SIZE):
            for tx in range(0, w, NOISE_SIZE):
                tiled.paste(src, (tx, ty))
        return tiled

    if mono:
        n = window()
        return Image.merge("RGB", (n, n, n))
    return Image.merge("RGB", (window(), window(), window()))


def texture(img: Image.Image, rng: random.Random, amount: float = 4.0) -> Image.Image:
    """Add smooth surface unevenness so panels do not look like flat vector art."""
    return ImageChops.add(img.convert("RGB"), noise_rgb("low", img.size, amount, rng), 1.0, -128)


def panel(size: tuple[int, int], color: RGB, rng: random.Random, *, grain: float = 3.0) -> Image.Image:
    """A moulded-plastic or painted-metal surface: soft vertical gradient plus grain."""
    top, bottom = shade(color, 1.08), shade(color, 0.9)
    return texture(gradient(size, top, bottom), rng, grain)


def rounded(d: ImageDraw.ImageDraw, box: Box, r: float, fill: RGB | None = None, outline: RGB | None = None,
            width: int = 1) -> None:
    d.rounded_rectangle([round(v) for v in box], radius=round(r), fill=fill, outline=outline, width=width)


def bevel(d: ImageDraw.ImageDraw, box: Box, r: float, fill: RGB, depth: int = 3) -> None:
    """A raised button/bezel: light top-left edge, dark bottom-right edge."""
    x0, y0, x1, y1 = box
    rounded(d, (x0 + depth, y0 + depth, x1 + depth, y1 + depth), r, fill=shade(fill, 0.55))
    rounded(d, (x0, y0, x1, y1), r, fill=shade(fill, 1.2))
    rounded(d, (x0 + 1, y0 + 1, x1 - 1, y1 - 1), r, fill=fill)


def led(img: Image.Image, center: tuple[float, float], r: float, color: RGB, on: bool) -> None:
    """An indicator LED: lit ones get a bright core and a soft glow, unlit ones a dark tinted lens."""
    cx, cy = center
    if on:  # glow: blur only a local patch (a full-image blur per LED is needlessly slow)
        half = int(r * 6)
        glow = Image.new("L", (2 * half, 2 * half), 0)
        ImageDraw.Draw(glow).ellipse([half - r * 3, half - r * 3, half + r * 3, half + r * 3], fill=150)
        glow = glow.filter(ImageFilter.GaussianBlur(r * 1.2))
        img.paste(Image.new("RGB", glow.size, color), (int(cx) - half, int(cy) - half), glow)
    d = ImageDraw.Draw(img)
    d.ellipse([cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2], fill=(40, 40, 40))
    lens = color if on else shade(mix(color, (60, 60, 60), 0.55), 0.6)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=lens)
    hl = mix(lens, (255, 255, 255), 0.7 if on else 0.25)
    d.ellipse([cx - r * 0.45, cy - r * 0.55, cx - r * 0.05, cy - r * 0.15], fill=hl)


# ----------------------------------------------------------------------------------------- char LCD


def dot_lcd(
    lines: list[str],
    cols: int,
    *,
    bg: RGB,
    on: RGB,
    dot: int = 3,
    gap: int = 1,
    char_gap: int = 3,
    margin: int = 10,
) -> Image.Image:
    """A character LCD (HD44780 look): 5×7 dot cells, faint unlit dots, per-line ``cols`` characters."""
    off = mix(bg, on, 0.12)
    cw, ch = 5 * (dot + gap) + char_gap, 8 * (dot + gap) + char_gap
    w, h = margin * 2 + cols * cw, margin * 2 + len(lines) * ch
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    for row, line in enumerate(lines):
        line = line.upper()[:cols].ljust(cols)
        for col, c in enumerate(line):
            glyph = FONT_5X7.get(c, FONT_5X7["?"])
            x0, y0 = margin + col * cw, margin + row * ch
            for gx in range(5):
                bits = glyph[gx]
                for gy in range(7):
                    lit = (bits >> gy) & 1
                    x, y = x0 + gx * (dot + gap), y0 + gy * (dot + gap)
                    d.rectangle([x, y, x + dot - 1, y + dot - 1], fill=on if lit else off)
    # backlight falls off towards the edges
    return vignette(img, 0.18)


def vignette(img: Image.Image, strength: float) -> Image.Image:
    w, h = img.size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
    k = 1.0 - strength * np.clip(r - 0.3, 0, None) ** 2
    arr = np.asarray(img, np.float32) * k[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------- 7-segment


def seven_seg(
    d: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    s: str,
    height: float,
    on: RGB,
    off: RGB | None = None,
    *,
    slant: float = 0.1,
    spacing: float = 0.28,
) -> float:
    """Draw a 7-segment string at top-left ``xy``; a '.' lights the previous digit's decimal point.

    Unlit segments are drawn in ``off`` (real displays show faint ghost segments).  Returns the width used.
    """
    w = height * 0.52
    t = height * 0.12  # segment thickness
    x, y = xy
    chars: list[tuple[str, bool]] = []
    for c in s:
        if c == "." and chars:
            chars[-1] = (chars[-1][0], True)
        else:
            chars.append((c, False))
    for c, dp in chars:
        segs = SEVEN_SEG.get(c, SEVEN_SEG.get(c.upper(), SEVEN_SEG.get(c.lower(), "")))
        for name in "abcdefg":
            poly = _segment(name, x, y, w, height, t, slant)
            if name in segs:
                d.polygon(poly, fill=on)
            elif off is not None:
                d.polygon(poly, fill=off)
        r = t * 0.6
        px, py = x + w + t * 0.9 - slant * height * 0.0, y + height - r
        if dp or off is not None:
            d.ellipse([px - r, py - r, px + r, py + r], fill=on if dp else off)
        x += w + height * spacing
    return x - xy[0]


def _segment(name: str, x: float, y: float, w: float, h: float, t: float, slant: float) -> list[tuple[float, float]]:
    """Hexagonal segment polygon; ``slant`` shears the digit to the right like real LED displays."""
    half = h / 2
    g = t * 0.18  # gap between segments

    def hseg(yc: float) -> list[tuple[float, float]]:
        return [(x + g + t / 2, yc), (x + g + t, yc - t / 2), (x + w - g - t, yc - t / 2), (x + w - g - t / 2, yc),
                (x + w - g - t, yc + t / 2), (x + g + t, yc + t / 2)]

    def vseg(xc: float, y0: float, y1: float) -> list[tuple[float, float]]:
        return [(xc, y0 + g + t / 2), (xc + t / 2, y0 + g + t), (xc + t / 2, y1 - g - t), (xc, y1 - g - t / 2),
                (xc - t / 2, y1 - g - t), (xc - t / 2, y0 + g + t)]

    pts = {
        "a": hseg(y + t / 2),
        "g": hseg(y + half),
        "d": hseg(y + h - t / 2),
        "f": vseg(x + t / 2, y + t / 2, y + half),
        "b": vseg(x + w - t / 2, y + t / 2, y + half),
        "e": vseg(x + t / 2, y + half, y + h - t / 2),
        "c": vseg(x + w - t / 2, y + half, y + h - t / 2),
    }[name]
    return [(px + slant * (y + h - py), py) for px, py in pts]


# ----------------------------------------------------------------------------------------- gauges


def gauge(
    size: int,
    value: float,
    vmin: float,
    vmax: float,
    unit: str,
    label: str,
    rng: random.Random,
    *,
    zones: list[tuple[float, float, RGB]] | None = None,
    major: float | None = None,
    bezel: RGB = (190, 190, 195),
    ghost: tuple[float, float] | None = None,
    face: RGB = (250, 250, 246),
) -> Image.Image:
    """A Bourdon-tube pressure gauge (270° dial) drawn at 2× and reduced, for smooth needles.

    ``ghost`` = (lo, hi) draws a motion-blurred needle sweep: a fluctuating reading in a still photo.
    The dial face is cached, so animating a needle over many frames is cheap.
    """
    zkey = tuple((float(lo), float(hi), tuple(c)) for lo, hi, c in (zones or ()))
    img = _gauge_face(size, float(vmin), float(vmax), unit, label, zkey, major, tuple(bezel), tuple(face)).copy()
    d = ImageDraw.Draw(img)
    ss = 2
    S = size * ss
    c, R = S / 2, S / 2 - 2

    def ang(v: float) -> float:
        return _gauge_angle(v, vmin, vmax)

    if ghost is not None:
        sweep = Image.new("RGBA", (S, S), (0, 0, 0, 0))
        sd = ImageDraw.Draw(sweep)
        lo, hi = ghost
        for k in range(13):
            _needle(sd, c, R, ang(lo + (hi - lo) * k / 12), (200, 30, 30, 60), ss)
        img.alpha_composite(sweep)
    _needle(d, c, R, ang(value + rng.uniform(-0.004, 0.004) * (vmax - vmin)), (200, 30, 30, 255), ss)
    d.ellipse([c - R * 0.07, c - R * 0.07, c + R * 0.07, c + R * 0.07], fill=(40, 40, 40))
    img.alpha_composite(_gauge_glass(S))
    return img.reduce(ss)


def _gauge_angle(v: float, vmin: float, vmax: float) -> float:
    a0, a1 = 135.0, 405.0  # PIL angles: 0 = 3 o'clock, clockwise
    return a0 + (a1 - a0) * (min(max(v, vmin), vmax) - vmin) / (vmax - vmin)


@lru_cache(maxsize=64)
def _gauge_face(size: int, vmin: float, vmax: float, unit: str, label: str,
                zones: tuple[tuple[float, float, tuple[int, ...]], ...], major: float | None,
                bezel: RGB, face: RGB) -> Image.Image:
    ss = 2
    S = size * ss
    img = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    c = S / 2
    R = S / 2 - 2
    d.ellipse([c - R, c - R, c + R, c + R], fill=shade(bezel, 0.7))
    d.ellipse([c - R * 0.97, c - R * 0.97, c + R * 0.97, c + R * 0.97], fill=bezel)
    d.ellipse([c - R * 0.86, c - R * 0.86, c + R * 0.86, c + R * 0.86], fill=shade(bezel, 0.8))
    d.ellipse([c - R * 0.84, c - R * 0.84, c + R * 0.84, c + R * 0.84], fill=face)

    def ang(v: float) -> float:
        return _gauge_angle(v, vmin, vmax)

    rz = R * 0.74
    for lo, hi, col in zones:
        d.arc([c - rz, c - rz, c + rz, c + rz], ang(lo), ang(hi), fill=col, width=int(R * 0.07))
    span = vmax - vmin
    major = major or _nice_step(span)
    minor = major / 5
    n = int(round(span / minor))
    for i in range(n + 1):
        v = vmin + i * minor
        a = math.radians(ang(v))
        is_major = abs((v - vmin) / major - round((v - vmin) / major)) < 1e-6
        r0 = R * (0.66 if is_major else 0.72)
        r1 = R * 0.8
        d.line([(c + r0 * math.cos(a), c + r0 * math.sin(a)), (c + r1 * math.cos(a), c + r1 * math.sin(a))],
               fill=(25, 25, 25), width=int(ss * (3 if is_major else 1.5)))
        if is_major:
            rt = R * 0.53
            d.text((c + rt * math.cos(a), c + rt * math.sin(a)), f"{v:g}", font=font(int(R * 0.13)), fill=(25, 25, 25), anchor="mm")
    d.text((c, c + R * 0.32), unit, font=font(int(R * 0.14)), fill=(40, 40, 40), anchor="mm")
    d.text((c, c - R * 0.3), label, font=font(int(R * 0.1)), fill=(90, 90, 90), anchor="mm")
    return img


@lru_cache(maxsize=8)
def _gauge_glass(S: int) -> Image.Image:
    """Soft reflection on the gauge glass (blurred once at quarter size, then scaled up)."""
    q = S // 4
    gl = Image.new("RGBA", (q, q), (255, 255, 255, 0))
    c, R = q / 2, q / 2
    ImageDraw.Draw(gl).ellipse([c - R * 0.7, c - R * 0.8, c + R * 0.2, c - R * 0.1], fill=(255, 255, 255, 40))
    return gl.filter(ImageFilter.GaussianBlur(q * 0.03)).resize((S, S), Image.Resampling.BILINEAR)


def _needle(d: ImageDraw.ImageDraw, c: float, R: float, angle: float, fill: RGB | tuple[int, int, int, int],
            ss: int) -> None:
    a = math.radians(angle)
    tip = (c + R * 0.76 * math.cos(a), c + R * 0.76 * math.sin(a))
    tail = (c - R * 0.15 * math.cos(a), c - R * 0.15 * math.sin(a))
    n = (-math.sin(a) * R * 0.025, math.cos(a) * R * 0.025)
    d.polygon([tip, (tail[0] + n[0], tail[1] + n[1]), (tail[0] - n[0], tail[1] - n[1])], fill=fill)


def _nice_step(span: float) -> float:
    for step in (0.5, 1, 2, 2.5, 5, 10, 20, 25, 50, 100, 200, 500):
        if span / step <= 10:
            return step
    return span / 10


# ----------------------------------------------------------------------------------------- icons


def warning_icon(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, color: RGB = (245, 180, 0)) -> None:
    h = s * 0.9
    d.polygon([(cx, cy - h / 2), (cx + s / 2, cy + h / 2), (cx - s / 2, cy + h / 2)], fill=color)
    d.rectangle([cx - s * 0.05, cy - h * 0.18, cx + s * 0.05, cy + h * 0.2], fill=(20, 20, 20))
    d.ellipse([cx - s * 0.06, cy + h * 0.27, cx + s * 0.06, cy + h * 0.39], fill=(20, 20, 20))


def error_icon(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, color: RGB = (215, 40, 40)) -> None:
    r = s / 2
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    k = r * 0.45
    w = max(2, int(s * 0.1))
    d.line([(cx - k, cy - k), (cx + k, cy + k)], fill=(255, 255, 255), width=w)
    d.line([(cx - k, cy + k), (cx + k, cy - k)], fill=(255, 255, 255), width=w)


def info_icon(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, color: RGB = (40, 110, 220)) -> None:
    r = s / 2
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    d.rectangle([cx - s * 0.06, cy - s * 0.08, cx + s * 0.06, cy + s * 0.3], fill=(255, 255, 255))
    d.ellipse([cx - s * 0.07, cy - s * 0.3, cx + s * 0.07, cy - s * 0.16], fill=(255, 255, 255))


def lock_icon(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, color: RGB) -> None:
    d.arc([cx - s * 0.28, cy - s * 0.55, cx + s * 0.28, cy + s * 0.05], 180, 360, fill=color, width=max(2, int(s * 0.1)))
    d.rounded_rectangle([cx - s * 0.4, cy - s * 0.2, cx + s * 0.4, cy + s * 0.45], radius=int(s * 0.08), fill=color)


def battery_icon(d: ImageDraw.ImageDraw, x: float, y: float, w: float, level: float, color: RGB) -> None:
    h = w * 0.5
    d.rectangle([x, y, x + w, y + h], outline=color, width=max(1, int(w * 0.08)))
    d.rectangle([x + w, y + h * 0.3, x + w * 1.08, y + h * 0.7], fill=color)
    if level > 0:
        d.rectangle([x + w * 0.12, y + h * 0.22, x + w * 0.12 + (w * 0.76) * level, y + h * 0.78], fill=color)


def wifi_icon(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, color: RGB, crossed: bool = False) -> None:
    for k in (1.0, 0.68, 0.36):
        r = s * 0.5 * k
        d.arc([cx - r, cy - r, cx + r, cy + r], 225, 315, fill=color, width=max(2, int(s * 0.09)))
    d.ellipse([cx - s * 0.07, cy - s * 0.07, cx + s * 0.07, cy + s * 0.07], fill=color)
    if crossed:
        d.line([(cx - s * 0.45, cy - s * 0.5), (cx + s * 0.45, cy + s * 0.1)], fill=(220, 40, 40), width=max(2, int(s * 0.1)))


def arrow(d: ImageDraw.ImageDraw, p0: tuple[float, float], p1: tuple[float, float], color: RGB, width: int = 4, head: float = 14) -> None:
    d.line([p0, p1], fill=color, width=width)
    a = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
    left = (p1[0] - head * math.cos(a - 0.45), p1[1] - head * math.sin(a - 0.45))
    right = (p1[0] - head * math.cos(a + 0.45), p1[1] - head * math.sin(a + 0.45))
    d.polygon([p1, left, right], fill=color)


def curved_arrow(d: ImageDraw.ImageDraw, center: tuple[float, float], r: float, a0: float, a1: float, color: RGB, width: int = 5) -> None:
    """An arc with an arrowhead at ``a1`` (degrees, PIL convention) — rotation direction marks."""
    cx, cy = center
    lo, hi = (a0, a1) if a1 > a0 else (a1, a0)
    d.arc([cx - r, cy - r, cx + r, cy + r], lo, hi, fill=color, width=width)
    a = math.radians(a1)
    tip = (cx + r * math.cos(a), cy + r * math.sin(a))
    direction = 1 if a1 > a0 else -1
    tang = (-math.sin(a) * direction, math.cos(a) * direction)
    back = (tip[0] - tang[0] * 16, tip[1] - tang[1] * 16)
    nrm = (math.cos(a) * 9, math.sin(a) * 9)
    d.polygon([(tip[0] + tang[0] * 4, tip[1] + tang[1] * 4), (back[0] + nrm[0], back[1] + nrm[1]), (back[0] - nrm[0], back[1] - nrm[1])], fill=color)
