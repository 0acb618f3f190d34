"""Scene renderers: one function per kind of picture a support desk receives.

Each ``render_*(p, rng)`` draws from a parameter dict ``p`` (the fault-relevant content: codes, LED states,
needle values, messages) and a ``random.Random`` used only for incidental details (panel shade, small offsets,
clock times, background clutter).  Rendering the same ``p`` with another ``rng`` therefore gives a different
picture of the same fault — which is exactly what the eval queries need.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from knowledge_base.sample.draw import (
    RGB,
    arrow,
    battery_icon,
    bevel,
    curved_arrow,
    dot_lcd,
    error_icon,
    gauge,
    gradient,
    info_icon,
    jitter,
    led,
    lock_icon,
    mix,
    panel,
    rounded,
    seven_seg,
    shade,
    text,
    texture,
    warning_icon,
    wifi_icon,
    wrap,
)

Params = dict[str, Any]

LED_COLORS: dict[str, RGB] = {
    "green": (40, 230, 70),
    "red": (255, 40, 30),
    "amber": (255, 170, 0),
    "yellow": (250, 230, 40),
    "blue": (40, 120, 255),
    "white": (240, 240, 255),
}

BACKLIGHTS: dict[str, tuple[RGB, RGB]] = {  # (background, lit pixels)
    "green": ((150, 190, 40), (25, 45, 15)),
    "blue": ((35, 70, 210), (230, 240, 255)),
    "amber": ((250, 165, 35), (60, 30, 0)),
    "white": ((205, 215, 205), (20, 25, 20)),
    "orange": ((255, 120, 30), (40, 15, 0)),
    "ice": ((150, 210, 235), (15, 35, 60)),
}


def _is_on(state: str | bool) -> bool:
    """'on'/'blink' render lit (a photo of a blinking LED usually catches it lit), 'off' dark."""
    return state in (True, "on", "blink")


# ============================================================================================ printers


def render_printer_lcd(p: Params, rng: random.Random) -> Image.Image:
    """Front control panel of an office laser printer with a character LCD, status LEDs and keys."""
    W, H = 760, 430
    body = jitter(tuple(p.get("body", (214, 214, 210))), rng, 5)
    img = panel((W, H), body, rng)
    d = ImageDraw.Draw(img)
    dx, dy = rng.randint(-6, 6), rng.randint(-4, 4)
    # panel recess and brand
    rounded(d, (20 + dx, 20 + dy, W - 20 + dx, H - 20 + dy), 18, fill=shade(body, 0.93), outline=shade(body, 0.75), width=2)
    text(d, (44 + dx, 38 + dy), p.get("brand", "PRINTEK"), 22, fill=(60, 60, 70), bold=True)
    text(d, (44 + dx + 130, 42 + dy), p["model"], 18, fill=(90, 90, 95))
    # LCD
    cols = p.get("cols", 20)
    bg, on = BACKLIGHTS[p.get("backlight", "green")]
    lcd = dot_lcd(p["lines"], cols, bg=bg, on=on, dot=3 if cols > 16 else 4)
    lx, ly = 50 + dx, 90 + dy
    rounded(d, (lx - 14, ly - 14, lx + lcd.width + 14, ly + lcd.height + 14), 8, fill=(30, 30, 32))
    img.paste(lcd, (lx, ly))
    # status LEDs in a row at the top right
    leds = p.get("leds", {"ready": "on", "attention": "off"})
    for i, (name, color) in enumerate((("ready", "green"), ("data", "green"), ("attention", "amber"))):
        x, y = 330 + dx + i * 105, 48 + dy
        led(img, (x, y), 7, LED_COLORS[color], _is_on(leds.get(name, "off")))
        text(d, (x + 14, y), name.capitalize(), 15, fill=(60, 60, 60), anchor="lm")
    if p.get("toner_leds"):
        toners: tuple[RGB, ...] = ((0, 170, 230), (230, 0, 140), (250, 220, 0), (30, 30, 30))  # C, M, Y, K
        for i, swatch in enumerate(toners):
            x = lx + 20 + i * 46
            y = ly + lcd.height + 40
            led(img, (x, y), 6, (255, 170, 0), p["toner_leds"][i] == "1")
            d.rectangle([x - 8, y + 14, x + 8, y + 22], fill=swatch)
    # keypad on the right
    kx, ky = W - 100 + dx, 170 + dy
    for (ox, oy) in ((0, -52), (0, 52), (-52, 0), (52, 0)):
        bevel(d, (kx + ox - 20, ky + oy - 16, kx + ox + 20, ky + oy + 16), 8, (70, 72, 78))
    d.polygon([(kx, ky - 60), (kx - 7, ky - 48), (kx + 7, ky - 48)], fill=(220, 220, 220))
    d.polygon([(kx, ky + 60), (kx - 7, ky + 48), (kx + 7, ky + 48)], fill=(220, 220, 220))
    bevel(d, (kx - 24, ky - 20, kx + 24, ky + 20), 20, (90, 92, 98))
    text(d, (kx, ky), "OK", 16, fill=(240, 240, 240), anchor="mm", bold=True)
    by = H - 95 + dy
    for i, (label, col) in enumerate((("Back", (80, 82, 88)), ("Menu", (80, 82, 88)), ("Stop", (200, 40, 35)), ("Go", (40, 150, 60)))):
        x = 60 + dx + i * 120
        bevel(d, (x, by, x + 84, by + 44), 10, col)
        text(d, (x + 42, by + 22), label, 16, fill=(245, 245, 245), anchor="mm")
    return img


def render_mfp_screen(p: Params, rng: random.Random) -> Image.Image:
    """Colour touchscreen of a multifunction printer showing a jam/error with a machine illustration."""
    W, H = 800, 480
    accent = tuple(p.get("accent", (30, 110, 200)))
    img = Image.new("RGB", (W, H), (238, 240, 243))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, W, 44], fill=(45, 48, 55))
    text(d, (16, 22), p["model"], 17, fill=(235, 235, 235), anchor="lm")
    hh, mm = rng.randint(7, 18), rng.randint(0, 59)
    text(d, (W - 16, 22), f"{hh:02d}:{mm:02d}", 17, fill=(235, 235, 235), anchor="rm")
    for i, lvl in enumerate(p.get("toner", (0.8, 0.6, 0.7, 0.4))):
        x = W - 170 + i * 22
        d.rectangle([x, 12, x + 12, 32], outline=(200, 200, 200))
        col = ((0, 170, 230), (230, 0, 140), (250, 220, 0), (20, 20, 20))[i] if len(p.get("toner", ())) == 4 else (20, 20, 20)
        d.rectangle([x + 1, 32 - int(19 * lvl), x + 11, 31], fill=col if i < 3 else (200, 200, 200))
    wifi_icon(d, W - 200, 28, 24, (230, 230, 230))
    # header band
    d.rectangle([0, 44, W, 110], fill=accent)
    icon = p.get("icon", "warning")
    (error_icon if icon == "error" else warning_icon)(d, 50, 77, 40)
    text(d, (84, 66), p["title"], 24, fill=(255, 255, 255), anchor="lm", bold=True)
    text(d, (84, 94), f"Code {p['code']}", 16, fill=shade((255, 255, 255), 0.9), anchor="lm")
    # machine illustration
    _mfp_illustration(img, (30, 130, 380, 440), p.get("highlight", "adf"), rng)
    # instructions
    y = 140
    for i, step in enumerate(p["steps"], 1):
        d.ellipse([410, y, 436, y + 26], fill=accent)
        text(d, (423, y + 13), str(i), 15, fill=(255, 255, 255), anchor="mm", bold=True)
        for j, line in enumerate(wrap(step, 17, 330)):
            text(d, (448, y + 4 + j * 22), line, 17, fill=(35, 35, 40))
        y += 26 + 22 * max(1, len(wrap(step, 17, 330))) + 6
    for i, label in enumerate(p.get("buttons", ("How to fix", "OK"))):
        x = W - 150 - i * 160
        rounded(d, (x, H - 62, x + 140, H - 18), 10, fill=accent if i == 0 else (255, 255, 255), outline=accent, width=2)
        text(d, (x + 70, H - 40), label, 17, fill=(255, 255, 255) if i == 0 else accent, anchor="mm")
    # device bezel
    out = Image.new("RGB", (W + 60, H + 60), jitter((25, 25, 28), rng, 4))
    out.paste(img, (30, 30))
    return out


def _mfp_illustration(img: Image.Image, box: tuple[int, int, int, int], highlight: str, rng: random.Random) -> None:
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    hi = (235, 60, 40)
    grey, dark = (205, 208, 212), (120, 124, 130)
    parts = {
        "adf": (x0 + 40, y0 + 10, x1 - 60, y0 + 55),
        "scanner": (x0 + 30, y0 + 55, x1 - 40, y0 + 95),
        "body": (x0 + 20, y0 + 95, x1 - 30, y1 - 70),
        "duplex": (x1 - 60, y0 + 110, x1 - 30, y1 - 80),
        "tray1": (x0 + 30, y1 - 70, x1 - 40, y1 - 40),
        "tray2": (x0 + 30, y1 - 38, x1 - 40, y1 - 8),
        "front_door": (x0 + 40, y0 + 120, x1 - 80, y1 - 90),
    }
    for name in ("body", "scanner", "adf", "tray1", "tray2"):
        rounded(d, parts[name], 6, fill=grey, outline=dark, width=2)
    d.rectangle([x0 + 60, y0 + 30, x1 - 90, y0 + 40], fill=(255, 255, 255), outline=dark)  # originals
    rounded(d, (x0 + 40, y0 + 150, x0 + 120, y0 + 175), 4, fill=(60, 64, 70))  # output slot
    target = parts.get(highlight, parts["body"])
    for k in range(3):
        rounded(d, (target[0] - 4 - k * 3, target[1] - 4 - k * 3, target[2] + 4 + k * 3, target[3] + 4 + k * 3), 8, outline=mix(hi, (238, 240, 243), k * 0.35), width=3)
    cx = (target[0] + target[2]) / 2
    arrow(d, (cx + 70, target[1] - 45), (cx + 10, target[1] - 8), hi, width=5)
    if highlight in ("adf", "duplex", "tray2", "tray1"):
        # the stuck sheet
        sx, sy = (target[0] + target[2]) / 2, (target[1] + target[3]) / 2
        d.polygon([(sx - 30, sy - 6), (sx + 10, sy - 14), (sx + 36, sy + 2), (sx - 4, sy + 10)], fill=(255, 255, 255), outline=(90, 90, 90))


def render_jam_diagram(p: Params, rng: random.Random) -> Image.Image:
    """Service-style side view of the paper path with the jam location highlighted."""
    W, H = 720, 520
    img = Image.new("RGB", (W, H), jitter((250, 250, 247), rng, 3))
    d = ImageDraw.Draw(img)
    text(d, (24, 20), p["title"], 22, fill=(20, 20, 20), bold=True)
    text(d, (24, 52), str(p.get("subtitle", p["model"])), 16, fill=(90, 90, 90))
    ox, oy = 90 + rng.randint(-8, 8), 100 + rng.randint(-5, 5)
    body = (ox, oy, ox + 520, oy + 340)
    rounded(d, body, 14, outline=(60, 60, 60), width=3, fill=(236, 238, 240))
    comps = {
        "tray1": ((ox + 20, oy + 250, ox + 420, oy + 285), "Tray 1"),
        "tray2": ((ox + 20, oy + 295, ox + 420, oy + 330), "Tray 2"),
        "toner": ((ox + 150, oy + 60, ox + 300, oy + 120), "Toner / drum"),
        "fuser": ((ox + 360, oy + 50, ox + 450, oy + 110), "Fuser"),
        "duplex": ((ox + 470, oy + 130, ox + 505, oy + 290), "Duplex"),
        "exit": ((ox + 360, oy + 10, ox + 460, oy + 40), "Exit"),
        "laser": ((ox + 150, oy + 140, ox + 300, oy + 190), "Laser unit"),
    }
    for box, label in comps.values():
        d.rectangle(box, outline=(80, 80, 80), width=2, fill=(220, 224, 228))
        text(d, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), label, 14, fill=(50, 50, 50), anchor="mm")
    # paper path: from tray up the right side, through drum and fuser to exit
    path = [(ox + 420, oy + 312), (ox + 455, oy + 300), (ox + 460, oy + 200), (ox + 330, oy + 125),
            (ox + 300, oy + 120), (ox + 360, oy + 80), (ox + 450, oy + 80), (ox + 470, oy + 25), (ox + 420, oy + 25)]
    d.line(path, fill=(40, 110, 220), width=4, joint="curve")
    for (x, y) in ((ox + 455, oy + 300), (ox + 460, oy + 200), (ox + 360, oy + 80), (ox + 450, oy + 80)):
        d.ellipse([x - 10, y - 10, x + 10, y + 10], fill=(60, 60, 60))
    loc = {
        "tray2": (ox + 430, oy + 312),
        "tray1": (ox + 430, oy + 268),
        "fuser": (ox + 405, oy + 80),
        "duplex": (ox + 488, oy + 210),
        "exit": (ox + 440, oy + 25),
    }[p["location"]]
    hi = (225, 35, 35)
    d.ellipse([loc[0] - 40, loc[1] - 40, loc[0] + 40, loc[1] + 40], outline=hi, width=5)
    crumple = [(loc[0] - 24, loc[1] - 4), (loc[0] - 10, loc[1] - 14), (loc[0] + 2, loc[1] - 2), (loc[0] + 14, loc[1] - 16), (loc[0] + 24, loc[1] + 6), (loc[0] - 6, loc[1] + 12)]
    d.polygon(crumple, fill=(255, 255, 255), outline=(40, 40, 40))
    cx = min(loc[0] + 60, W - 190)
    cy = loc[1] + 60 if loc[1] < oy + 200 else loc[1] - 110
    rounded(d, (cx, cy, cx + 170, cy + 50), 6, fill=hi)
    text(d, (cx + 85, cy + 25), f"JAM {p['code']}", 20, fill=(255, 255, 255), anchor="mm", bold=True)
    if p.get("door"):
        arrow(d, (ox + 580, oy + 180), (ox + 525, oy + 180), hi, width=4)
        text(d, (W - 8, oy + 192), p["door"], 14, fill=hi, anchor="ra")
    return img


def render_print_defect(p: Params, rng: random.Random) -> Image.Image:
    """A scanned test print showing a print-quality defect (streaks, repeating dots, colour fringing)."""
    W, H = 600, 780
    img = Image.new("RGB", (W, H), (252, 252, 250))
    d = ImageDraw.Draw(img)
    text(d, (40, 40), p.get("header", "Print Quality Test Page"), 22, fill=(30, 30, 30), bold=True)
    text(d, (40, 72), p["model"], 14, fill=(100, 100, 100))
    lorem = "The quick brown fox jumps over the lazy dog 0123456789 "
    kind = p["defect"]
    for i in range(18):
        y = 120 + i * 26
        line = (lorem * 2)[i % 9: i % 9 + 46]
        if kind == "misregistration":
            off = p.get("offset", 3)
            text(d, (40 + off, y + 1), line, 16, fill=(0, 170, 230))
            text(d, (40 - off, y - 1), line, 16, fill=(230, 0, 140))
        text(d, (40, y), line, 16, fill=(25, 25, 25))
    # grey blocks / colour bars
    bars = ((0, 170, 230), (230, 0, 140), (250, 220, 0), (30, 30, 30)) if kind == "misregistration" else ((40, 40, 40), (110, 110, 110), (170, 170, 170), (210, 210, 210))
    for i, c in enumerate(bars):
        d.rectangle([40 + i * 130, 610, 150 + i * 130, 700], fill=c)
    arr = np.asarray(img, np.float32)
    if kind == "streaks":
        for x in p.get("streak_x", (160, 330, 420)):
            arr[:, x:x + 3, :] *= 0.55
        arr = 255 - (255 - arr) * p.get("fade", 0.6)  # light print
        for y in range(60, H, p.get("period_px", 150)):
            yy = y + rng.randint(-1, 1)
            arr[yy:yy + 6, 300:306, :] = 40
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def render_fuser_figure(p: Params, rng: random.Random) -> Image.Image:
    """Service-manual line drawing of a fuser unit: heat roller with lamp, pressure roller, thermistor, CN12."""
    W, H = 720, 420
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    rounded(d, (60, 60, 520, 340), 16, outline=(40, 40, 40), width=3, fill=(240, 240, 240))
    d.ellipse([160, 90, 300, 230], outline=(40, 40, 40), width=3, fill=(250, 225, 200))  # heat roller
    d.line([(170, 160), (290, 160)], fill=(230, 120, 20), width=6)  # heater lamp
    d.ellipse([170, 225, 290, 335], outline=(40, 40, 40), width=3, fill=(200, 200, 200))  # pressure roller
    d.rectangle([320, 110, 360, 140], outline=(40, 40, 40), width=2, fill=(60, 60, 60))  # thermistor
    d.rectangle([560, 140, 680, 240], outline=(40, 40, 40), width=3, fill=(245, 245, 235))  # connector
    for i in range(4):
        d.rectangle([575 + i * 26, 200, 591 + i * 26, 226], fill=(190, 160, 60))
        text(d, (583 + i * 26, 190), str(i + 1), 13, fill=(30, 30, 30), anchor="mm")
    d.line([(520, 180), (560, 180)], fill=(40, 40, 40), width=3)
    for label, xy, target in (("Heater lamp", (20, 30), (230, 160)), ("Thermistor", (360, 40), (340, 110)), ("Pressure roller", (300, 370), (260, 320)), ("CN12", (600, 100), (620, 140))):
        text(d, xy, label, 16, fill=(20, 20, 20))
        d.line([(xy[0] + 40, xy[1] + 20), target], fill=(20, 20, 20), width=1)
    return img


def render_manual_page(p: Params, rng: random.Random) -> Image.Image:
    """A service-manual page: header, numbered procedure, code table and an embedded diagram."""
    W, H = 850, 1100
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, W, 70], fill=(30, 60, 110))
    text(d, (40, 35), p["manual"], 22, fill=(255, 255, 255), anchor="lm", bold=True)
    text(d, (W - 40, 35), p["section"], 18, fill=(220, 230, 245), anchor="rm")
    text(d, (40, 100), p["title"], 28, fill=(20, 30, 60), bold=True)
    y = 150
    for para in p.get("paragraphs", []):
        for line in wrap(para, 17, W - 80):
            text(d, (40, y), line, 17, fill=(30, 30, 30))
            y += 24
        y += 10
    if p.get("table"):
        y += 6
        cols = (40, 170, 470, W - 40)
        d.rectangle([cols[0], y, cols[3], y + 30], fill=(225, 232, 245))
        for i, h in enumerate(p["table"][0]):
            text(d, (cols[i] + 8, y + 15), h, 16, fill=(20, 30, 60), anchor="lm", bold=True)
        y += 30
        for row in p["table"][1:]:
            hl = row[0] in p.get("highlight_codes", ())
            d.rectangle([cols[0], y, cols[3], y + 28], outline=(180, 180, 190), fill=(255, 243, 205) if hl else None)
            for i, cell in enumerate(row):
                text(d, (cols[i] + 8, y + 14), cell, 15, fill=(30, 30, 30), anchor="lm")
            y += 28
        y += 20
    if p.get("diagram") is not None:
        dia: Image.Image = p["diagram"]
        maxw, maxh = W - 160, H - y - 190
        if maxh > 120:
            dia = dia.copy()
            dia.thumbnail((maxw, maxh))
            img.paste(dia, ((W - dia.width) // 2, y))
            d.rectangle([(W - dia.width) // 2 - 1, y - 1, (W + dia.width) // 2, y + dia.height], outline=(160, 160, 160))
            y += dia.height + 12
            text(d, (W // 2, y + 10), p.get("figure", "Figure"), 15, fill=(80, 80, 80), anchor="mm")
            y += 36
    for i, step in enumerate(p.get("steps", []), 1):
        for j, line in enumerate(wrap(step, 16, W - 120)):
            if y > H - 80:
                break
            text(d, (40, y), f"{i}." if j == 0 else "", 16, fill=(20, 30, 60), bold=True)
            text(d, (70, y), line, 16, fill=(30, 30, 30))
            y += 22
    d.line([(40, H - 50), (W - 40, H - 50)], fill=(180, 180, 180), width=1)
    text(d, (40, H - 30), p.get("footer", ""), 14, fill=(110, 110, 110), anchor="lm")
    text(d, (W - 40, H - 30), p["page_label"], 14, fill=(110, 110, 110), anchor="rm")
    return img


# ============================================================================================ HVAC


def render_hvac_board(p: Params, rng: random.Random) -> Image.Image:
    """Rooftop-unit control board: PCB, relays, terminal strip, 2-digit display and status LEDs."""
    W, H = 760, 540
    layout = p.get("layout", "rtu48")
    pcb = (28, 110, 60) if layout == "rtu48" else (25, 60, 120)
    bg = panel((W, H), jitter((150, 152, 150), rng, 6), rng)  # cabinet sheet metal
    bx, by = 40 + rng.randint(-6, 6), 40 + rng.randint(-6, 6)
    board = texture(gradient((660, 440), shade(pcb, 1.1), shade(pcb, 0.9)), rng, 3)
    bd = ImageDraw.Draw(board)
    # traces
    tr = shade(pcb, 1.35)
    for i in range(14):
        y = 40 + i * 28
        bd.line([(20, y), (200 + (i * 37) % 180, y), (230 + (i * 37) % 180, y + 14), (640, y + 14)], fill=tr, width=2)
    for (x, y) in ((14, 14), (646, 14), (14, 426), (646, 426)):
        bd.ellipse([x - 9, y - 9, x + 9, y + 9], fill=(200, 200, 190))
        bd.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(60, 60, 60))
    # relays and transformer
    for i, name in enumerate(("K1 COMP", "K2 OFM", "K3 IDM")):
        x = 40 + i * 120
        bd.rectangle([x, 250, x + 100, 330], fill=(25, 25, 28))
        text(bd, (x + 50, 290), name, 13, fill=(200, 200, 200), anchor="mm")
    bd.rectangle([420, 250, 560, 360], fill=(60, 50, 40))
    text(bd, (490, 305), "24VAC", 14, fill=(230, 210, 170), anchor="mm")
    for i in range(4):
        x = 40 + i * 46
        bd.ellipse([x, 360, x + 34, 394], fill=(20, 60, 150))
        bd.ellipse([x + 6, 366, x + 28, 388], outline=(180, 190, 220))
    # terminal strip
    terms = ("R", "C", "Y1", "Y2", "G", "W1", "W2", "O/B") if layout == "rtu48" else ("R", "C", "Y1", "Y2", "G", "W1", "D+", "D-")
    for i, t in enumerate(terms):
        x = 40 + i * 52
        bd.rectangle([x, 396, x + 44, 432], fill=(40, 110, 60) if layout == "rtu48" else (230, 130, 20))
        bd.ellipse([x + 14, 404, x + 30, 420], fill=(170, 170, 170))
        text(bd, (x + 22, 388), t, 12, fill=(240, 240, 240), anchor="mm")
    text(bd, (24, 24), p["model"].upper() + " UNIT CONTROL", 15, fill=(235, 235, 220), bold=True)
    text(bd, (24, 46), "P/N " + ("CB-4800-2" if layout == "rtu48" else "CB-6000-4"), 12, fill=(220, 220, 200))
    # display window with 2 digits
    dx0, dy0 = 400, 40
    bd.rectangle([dx0, dy0, dx0 + 170, dy0 + 110], fill=(15, 10, 10), outline=(90, 90, 90), width=2)
    seven_seg(bd, (dx0 + 22, dy0 + 16), p["code"], 76, (255, 50, 30), off=(45, 18, 16))
    bg.paste(board, (bx, by))
    # LEDs (drawn on the full image so glows blend)
    leds = p.get("leds", [])
    for i, (label, color, state) in enumerate(leds):
        x, y = bx + 70 + i * 90, by + 190
        led(bg, (x, y), 9, LED_COLORS[color], _is_on(state))
        text(ImageDraw.Draw(bg), (x, y + 26), label, 13, fill=(235, 235, 220), anchor="mm")
    if p.get("flashes"):
        text(ImageDraw.Draw(bg), (bx + 400, by + 170), f"FAULT LED: {p['flashes']} FLASHES", 15, fill=(255, 230, 120), bold=True)
    return bg


def render_thermostat(p: Params, rng: random.Random) -> Image.Image:
    """Wall thermostat with a segmented LCD: big temperature, mode, message and status icons."""
    W, H = 600, 600
    wall = jitter(tuple(p.get("wall", (226, 218, 200))), rng, 6)
    img = panel((W, H), wall, rng, grain=2.5)
    d = ImageDraw.Draw(img)
    ox, oy = 90 + rng.randint(-10, 10), 80 + rng.randint(-10, 10)
    body = (ox, oy, ox + 420, oy + 440)
    rounded(d, (body[0] + 8, body[1] + 10, body[2] + 8, body[3] + 10), 40, fill=shade(wall, 0.75))
    rounded(d, body, 40, fill=(246, 246, 244), outline=(200, 200, 200), width=2)
    bl, fg = BACKLIGHTS[p.get("backlight", "ice")]
    if p.get("blank"):
        bl, fg = (120, 130, 128), (30, 30, 30)
    lx0, ly0, lx1, ly1 = ox + 40, oy + 40, ox + 380, oy + 300
    rounded(d, (lx0, ly0, lx1, ly1), 12, fill=bl, outline=(90, 90, 90), width=3)
    ghost = mix(bl, fg, 0.1)
    if not p.get("blank"):
        seven_seg(d, (lx0 + 40, ly0 + 50), p.get("temp", "72"), 120, fg, off=ghost)
        text(d, (lx0 + 230, ly0 + 60), "°F" if p.get("unit", "F") == "F" else "°C", 30, fill=fg)
        text(d, (lx0 + 24, ly0 + 22), p.get("mode", "COOL"), 20, fill=fg, bold=True)
        if p.get("setpoint"):
            text(d, (lx1 - 24, ly0 + 22), "SET " + p["setpoint"], 18, fill=fg, anchor="ra")
        msg = p.get("message", "")
        if msg:
            lcd = dot_lcd([msg], len(msg), bg=bl, on=fg, dot=3, margin=4)
            img.paste(lcd, (int((lx0 + lx1 - lcd.width) / 2), ly1 - 70))
        wifi_icon(d, lx1 - 40, ly1 - 90, 30, fg, crossed=p.get("link_lost", False))
    battery_icon(d, lx1 - 62, ly0 + 52, 36, p.get("battery", 0.8), fg)
    # buttons
    for i, label in enumerate(("MODE", "FAN", "▲", "▼")):
        x = ox + 55 + i * 85
        rounded(d, (x, oy + 330, x + 70, oy + 380), 14, fill=(230, 230, 228), outline=(180, 180, 180), width=2)
        if label in ("▲", "▼"):
            up = label == "▲"
            cx, cy = x + 35, oy + 355
            d.polygon([(cx, cy - 10 if up else cy + 10), (cx - 10, cy + 8 if up else cy - 8), (cx + 10, cy + 8 if up else cy - 8)], fill=(90, 90, 90))
        else:
            text(d, (x + 35, oy + 355), label, 15, fill=(90, 90, 90), anchor="mm")
    text(d, (ox + 210, oy + 410), p["model"].upper(), 16, fill=(150, 150, 150), anchor="mm")
    return img


def render_condenser_coil(p: Params, rng: random.Random) -> Image.Image:
    """Condenser coil seen through the louvres; debris level and fan state vary."""
    W, H = 700, 500
    img = panel((W, H), (180, 182, 178), rng)
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = 60, 50, 640, 450
    d.rectangle([x0, y0, x1, y1], fill=(150, 110, 70))
    for x in range(x0, x1, 5):
        d.line([(x, y0), (x, y1)], fill=(190, 150, 100), width=1)
    for y in range(y0 + 20, y1, 40):
        d.line([(x0, y), (x1, y)], fill=(120, 80, 50), width=3)
    g = np.random.default_rng(rng.getrandbits(32) if p.get("vary_debris", True) else 7)
    debris = p.get("debris", 0.6)
    arr = np.asarray(img, np.float32)
    mask = np.zeros((H, W), np.float32)
    for _ in range(int(60 * debris)):
        cx, cy = g.uniform(x0, x1), g.uniform(y0, y1)
        r = g.uniform(15, 60)
        yy, xx = np.ogrid[0:H, 0:W]
        mask = np.maximum(mask, np.clip(1 - ((xx - cx) ** 2 + (yy - cy) ** 2) / r ** 2, 0, 1))
    mask = np.clip(mask * 1.5, 0, 1)[..., None]
    arr = arr * (1 - mask) + np.array([135, 125, 105], np.float32) * mask
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    if p.get("fan_stopped"):
        d.ellipse([250, 130, 450, 330], outline=(40, 40, 40), width=6)
        for a in (0, 120, 240):
            ang = math.radians(a + 20)
            d.line([(350, 230), (350 + 90 * math.cos(ang), 230 + 90 * math.sin(ang))], fill=(40, 40, 40), width=22)
        rounded(d, (420, 60, 640, 110), 8, fill=(210, 40, 40))
        text(d, (530, 85), "FAN NOT RUNNING", 18, fill=(255, 255, 255), anchor="mm", bold=True)
    text(d, (x0, 15), p.get("label", "CONDENSER COIL"), 18, fill=(30, 30, 30), bold=True)
    return img


def render_manifold(p: Params, rng: random.Random) -> Image.Image:
    """Refrigerant manifold gauge set: blue low side and red high side."""
    W, H = 720, 480
    img = panel((W, H), jitter((70, 72, 76), rng, 5), rng)
    d = ImageDraw.Draw(img)
    d.rectangle([140, 330, 580, 400], fill=(170, 170, 175))
    for i, (side, val, vmax, col) in enumerate((("LOW", p["low"], 250, (40, 90, 200)), ("HIGH", p["high"], 800, (200, 40, 40)))):
        g = gauge(280, val, 0, vmax, "psig", f"R-410A {side}", rng, bezel=col, major=50 if vmax == 250 else 100)
        img.paste(g, (60 + i * 320, 50), g)
        for j, hx in enumerate((200 + i * 320, 230 + i * 320)):
            d.line([(hx, 400), (hx + (j - 0.5) * 40, 470)], fill=col, width=14)
    text(d, (W // 2, 365), p.get("note", ""), 18, fill=(30, 30, 30), anchor="mm", bold=True)
    return img


def render_phase_monitor(p: Params, rng: random.Random) -> Image.Image:
    """DIN-rail three-phase monitor relay with its status LEDs."""
    W, H = 560, 480
    img = panel((W, H), jitter((200, 200, 196), rng, 5), rng)
    d = ImageDraw.Draw(img)
    d.rectangle([0, 210, W, 260], fill=(160, 160, 165))  # DIN rail
    x0 = 180 + rng.randint(-8, 8)
    rounded(d, (x0, 70, x0 + 200, 410), 8, fill=(235, 235, 230), outline=(140, 140, 140), width=2)
    for i, t in enumerate(("L1", "L2", "L3")):
        d.ellipse([x0 + 30 + i * 55, 85, x0 + 60 + i * 55, 115], fill=(120, 120, 120))
        text(d, (x0 + 45 + i * 55, 130), t, 14, fill=(40, 40, 40), anchor="mm")
    text(d, (x0 + 100, 160), "PHASE MONITOR", 16, fill=(30, 30, 30), anchor="mm", bold=True)
    text(d, (x0 + 100, 182), "PM-3 380-480V", 13, fill=(90, 90, 90), anchor="mm")
    states = p["leds"]
    for i, (label, color) in enumerate((("POWER", "green"), ("PHASE OK", "green"), ("REVERSED", "red"), ("LOSS", "amber"))):
        y = 230 + i * 36
        led(img, (x0 + 40, y), 7, LED_COLORS[color], _is_on(states.get(label, "off")))
        text(ImageDraw.Draw(img), (x0 + 60, y), label, 14, fill=(40, 40, 40), anchor="lm")
    return img


def render_filter(p: Params, rng: random.Random) -> Image.Image:
    """Pleated return-air filter, clean vs loaded, with a differential pressure reading."""
    W, H = 640, 480
    img = panel((W, H), (90, 90, 95), rng)
    d = ImageDraw.Draw(img)
    d.rectangle([60, 60, 580, 420], fill=(200, 190, 160))
    for x in range(70, 575, 18):
        d.polygon([(x, 70), (x + 9, 70), (x + 18, 410), (x + 9, 410)], fill=(235, 230, 210))
    dirt = p.get("dirt", 0.8)
    arr = np.asarray(img, np.float32)
    g = np.random.default_rng(rng.getrandbits(32))
    small = Image.fromarray((g.random((H // 8, W // 8)) * 255).astype(np.uint8), "L")
    noise = np.asarray(small.resize((W, H), Image.Resampling.BILINEAR), np.float32) / 255.0
    m = np.zeros((H, W), np.float32)
    m[60:420, 60:580] = dirt * (0.6 + 0.4 * noise[60:420, 60:580])
    arr = arr * (1 - m[..., None]) + np.array([95, 85, 70], np.float32) * m[..., None]
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    rounded(d, (380, 20, 620, 60), 6, fill=(20, 20, 20))
    text(d, (500, 40), p.get("reading", "dP 0.62 in. w.c."), 18, fill=(255, 200, 40), anchor="mm")
    text(d, (70, 440), p.get("label", "RETURN AIR FILTER 20x25x2 MERV 8"), 16, fill=(230, 230, 230))
    return img


# ============================================================================================ pumps

PUMP_BLUE: RGB = (25, 80, 160)


def render_pump_gauges(p: Params, rng: random.Random) -> Image.Image:
    """Pump skid: suction and discharge gauges on the pipework, with the pump nameplate."""
    W, H = 800, 500
    img = panel((W, H), jitter((120, 124, 128), rng, 8), rng, grain=5)
    d = ImageDraw.Draw(img)
    # pipes
    d.rectangle([0, 330, W, 400], fill=(150, 150, 150))
    d.rectangle([0, 345, W, 352], fill=(175, 175, 175))
    blue = jitter(PUMP_BLUE, rng, 6)
    d.rectangle([470, 280, 760, 470], fill=(70, 110, 90), outline=(30, 50, 40), width=3)  # motor
    for x in range(485, 760, 16):
        d.line([(x, 282), (x, 468)], fill=(52, 88, 72), width=3)
    d.rectangle([440, 330, 480, 400], fill=(150, 150, 155))  # bearing frame
    d.ellipse([290, 250, 470, 450], fill=blue, outline=(15, 40, 90), width=3)  # volute
    d.ellipse([345, 305, 415, 375], outline=shade(blue, 0.7), width=4)
    d.rectangle([340, 200, 400, 260], fill=blue, outline=(15, 40, 90), width=3)  # discharge nozzle
    rounded(d, (320, 385, 440, 425), 4, fill=(210, 210, 200))
    text(d, (380, 405), p["model"].upper(), 13, fill=(30, 30, 30), anchor="mm", bold=True)
    for key in ("suction", "discharge"):
        x, y = PUMP_GAUGE_POS[key]
        d.rectangle([x + 125, 270, x + 145, 340], fill=(190, 160, 60))  # brass stem
        gauge_img = _pump_gauge(key, p[key], rng)
        img.paste(gauge_img, (x, y), gauge_img)
    if p.get("plate"):
        rounded(d, (560, 300, 740, 350), 4, fill=(210, 210, 200), outline=(80, 80, 80))
        for j, line in enumerate(p["plate"]):
            text(d, (570, 306 + j * 20), line, 13, fill=(30, 30, 30))
    if p.get("note"):
        rounded(d, (20, 420, 330, 480), 6, fill=(30, 30, 30))
        text(d, (175, 450), p["note"], 17, fill=(255, 220, 60), anchor="mm", bold=True)
    return img


PUMP_GAUGE_POS = {"suction": (65, 10), "discharge": (505, 10)}


def _pump_gauge(key: str, g: Params, rng: random.Random, value: float | None = None) -> Image.Image:
    return gauge(
        270,
        g["value"] if value is None else value,
        g["min"],
        g["max"],
        g.get("unit", "bar"),
        key.upper(),
        rng,
        zones=g.get("zones"),
        ghost=tuple(g["ghost"]) if g.get("ghost") and value is None else None,
    )


def render_pump_gauge_frames(p: Params, rng: random.Random, values: dict[str, list[float]]) -> list[Image.Image]:
    """Frames of a clip of the pump gauges with moving needles (``values[key][i]`` per frame).

    The scene is drawn once; only the moving gauges are redrawn (their opaque dials cover the old ones).
    """
    still = {k: dict(v, ghost=None) for k, v in p.items() if k in ("suction", "discharge")}
    base = render_pump_gauges({**p, **still}, rng)
    n = max(len(v) for v in values.values())
    frames = []
    for i in range(n):
        f = base.copy()
        for key, vals in values.items():
            g = _pump_gauge(key, p[key], random.Random(i), value=vals[i])
            f.paste(g, PUMP_GAUGE_POS[key], g)
        frames.append(f)
    return frames


def render_pump_schematic(p: Params, rng: random.Random) -> Image.Image:
    """Side view of a motor + end-suction pump set with one fault area highlighted and annotated."""
    W, H = 820, 500
    img = Image.new("RGB", (W, H), jitter((244, 244, 240), rng, 4))
    d = ImageDraw.Draw(img)
    text(d, (20, 16), p["title"], 20, fill=(20, 20, 20), bold=True)
    ox, oy = 40 + rng.randint(-6, 6), 110 + rng.randint(-6, 6)
    d.rectangle([ox, oy + 270, ox + 740, oy + 300], fill=(90, 90, 95))  # baseplate
    # motor
    d.rectangle([ox + 420, oy + 80, ox + 700, oy + 250], fill=(70, 110, 90), outline=(30, 50, 40), width=3)
    for x in range(ox + 440, ox + 690, 18):
        d.line([(x, oy + 80), (x, oy + 250)], fill=(50, 85, 70), width=3)
    d.rectangle([ox + 700, oy + 100, ox + 730, oy + 230], fill=(60, 95, 78))  # fan cover
    text(d, (ox + 560, oy + 60), "MOTOR 15 kW", 15, fill=(40, 40, 40), anchor="mm")
    # coupling guard & shaft
    d.rectangle([ox + 300, oy + 150, ox + 420, oy + 180], fill=(160, 160, 165))
    d.rectangle([ox + 330, oy + 120, ox + 400, oy + 210], fill=(240, 190, 30), outline=(120, 90, 10), width=2)
    text(d, (ox + 365, oy + 105), "COUPLING", 12, fill=(60, 60, 60), anchor="mm")
    # bearing housing
    d.rectangle([ox + 200, oy + 125, ox + 300, oy + 205], fill=(110, 120, 135), outline=(40, 45, 55), width=2)
    text(d, (ox + 250, oy + 225), "BEARINGS", 12, fill=(60, 60, 60), anchor="mm")
    # volute casing
    d.ellipse([ox + 20, oy + 60, ox + 200, oy + 250], fill=PUMP_BLUE, outline=(15, 40, 90), width=3)
    d.rectangle([ox + 80, oy + 10, ox + 140, oy + 80], fill=PUMP_BLUE, outline=(15, 40, 90), width=3)  # discharge
    d.rectangle([ox - 30, oy + 130, ox + 30, oy + 180], fill=PUMP_BLUE, outline=(15, 40, 90), width=3)  # suction
    text(d, (ox + 110, oy), "DISCHARGE", 12, fill=(60, 60, 60), anchor="mm")
    text(d, (ox, oy + 195), "SUCTION", 12, fill=(60, 60, 60), anchor="mm")
    # seal area
    d.rectangle([ox + 190, oy + 140, ox + 210, oy + 190], fill=(90, 90, 90))
    hi = (220, 30, 30)
    kind = p["highlight"]
    if kind == "seal":
        for k in range(7):
            x = ox + 195 + (k % 3) * 6
            y = oy + 200 + k * 10
            d.ellipse([x, y, x + 8, y + 13], fill=(80, 150, 230))
        d.ellipse([ox + 130, oy + 275, ox + 290, oy + 295], fill=(100, 160, 230))
        d.ellipse([ox + 170, oy + 120, ox + 235, oy + 210], outline=hi, width=4)
    elif kind == "bearing":
        d.rectangle([ox + 200, oy + 125, ox + 300, oy + 205], outline=hi, width=5)
        rounded(d, (ox + 180, oy - 60, ox + 370, oy - 5), 8, fill=(30, 30, 30))
        text(d, (ox + 275, oy - 32), p.get("reading", "95.3 °C"), 28, fill=(255, 80, 40), anchor="mm", bold=True)
        d.line([(ox + 260, oy - 5), (ox + 250, oy + 125)], fill=hi, width=2)
    elif kind == "coupling":
        d.line([(ox + 300, oy + 140), (ox + 420, oy + 158)], fill=hi, width=3)
        d.line([(ox + 300, oy + 190), (ox + 420, oy + 208)], fill=hi, width=3)
        d.rectangle([ox + 326, oy + 116, ox + 404, oy + 214], outline=hi, width=4)
        text(d, (ox + 365, oy + 240), p.get("reading", "misalignment"), 15, fill=hi, anchor="mm", bold=True)
        for k in range(3):
            d.arc([ox + 700 + k * 12, oy + 120 - k * 10, ox + 760 + k * 12, oy + 210 + k * 10], -60, 60, fill=hi, width=3)
    elif kind == "rotation":
        curved_arrow(d, (ox + 715, oy + 165), 55, 200, 330, (40, 160, 60), width=6)
        text(d, (ox + 715, oy + 240), "REQUIRED", 13, fill=(40, 140, 60), anchor="mm", bold=True)
        curved_arrow(d, (ox + 110, oy + 155), 70, 330, 200, hi, width=6)
        d.line([(ox + 70, oy + 95), (ox + 150, oy + 215)], fill=hi, width=6)
        text(d, (ox + 110, oy + 265), "ACTUAL", 13, fill=hi, anchor="mm", bold=True)
    elif kind == "impeller":
        d.ellipse([ox + 50, oy + 95, ox + 170, oy + 215], fill=(200, 200, 205), outline=(60, 60, 60), width=2)
        for a in range(0, 360, 60):
            r = math.radians(a)
            d.line([(ox + 110, oy + 155), (ox + 110 + 52 * math.cos(r), oy + 155 + 52 * math.sin(r))], fill=(110, 110, 115), width=8)
            # worn, jagged vane tips
            tx, ty = ox + 110 + 50 * math.cos(r), oy + 155 + 50 * math.sin(r)
            d.polygon([(tx - 5, ty - 5), (tx + 6, ty - 2), (tx, ty + 6)], fill=(200, 200, 205))
        d.ellipse([ox + 45, oy + 90, ox + 175, oy + 220], outline=hi, width=4)
        text(d, (ox + 110, oy + 262), p.get("reading", "worn impeller"), 14, fill=hi, anchor="mm", bold=True)
    if p.get("caption"):
        rounded(d, (20, H - 70, W - 20, H - 20), 8, fill=(255, 255, 255), outline=(180, 180, 180))
        text(d, (36, H - 45), p["caption"], 16, fill=(40, 40, 40), anchor="lm")
    return img


def render_vfd(p: Params, rng: random.Random) -> Image.Image:
    """Variable-frequency drive keypad: 5-digit LED display, status LEDs, keys, speed pot."""
    W, H = 520, 660
    img = panel((W, H), jitter((190, 192, 195), rng, 6), rng)
    d = ImageDraw.Draw(img)
    ox, oy = 70 + rng.randint(-8, 8), 40 + rng.randint(-6, 6)
    rounded(d, (ox + 6, oy + 8, ox + 386, oy + 588), 20, fill=(120, 120, 125))
    rounded(d, (ox, oy, ox + 380, oy + 580), 20, fill=(48, 50, 55))
    text(d, (ox + 24, oy + 24), p.get("brand", "HYDRA DRIVE"), 18, fill=(230, 230, 230), bold=True)
    text(d, (ox + 356, oy + 26), p["model"].split()[-1], 15, fill=(170, 170, 170), anchor="ra")
    rounded(d, (ox + 24, oy + 60, ox + 356, oy + 170), 6, fill=(12, 8, 8))
    seven_seg(d, (ox + 44, oy + 80), p["code"].rjust(5), 70, (255, 45, 30), off=(40, 14, 12), slant=0.08, spacing=0.22)
    leds = p.get("leds", {})
    for i, name in enumerate(("RUN", "FWD", "REV", "FAULT", "Hz", "A")):
        x = ox + 40 + i * 58
        color = "red" if name == "FAULT" else "green"
        led(img, (x, oy + 196), 6, LED_COLORS[color], _is_on(leds.get(name, "off")))
        text(ImageDraw.Draw(img), (x, oy + 216), name, 12, fill=(210, 210, 210), anchor="mm")
    d = ImageDraw.Draw(img)
    keys = (("PRG", (80, 82, 88)), ("ENT", (80, 82, 88)), ("▲", (80, 82, 88)), ("▼", (80, 82, 88)), ("RUN", (40, 140, 60)), ("STOP\nRESET", (190, 40, 35)))
    for i, (label, col) in enumerate(keys):
        x = ox + 40 + (i % 3) * 105
        y = oy + 250 + (i // 3) * 90
        bevel(d, (x, y, x + 86, y + 64), 10, col)
        if label in ("▲", "▼"):
            up = label == "▲"
            cx, cy = x + 43, y + 32
            d.polygon([(cx, cy - 12 if up else cy + 12), (cx - 12, cy + 10 if up else cy - 10), (cx + 12, cy + 10 if up else cy - 10)], fill=(235, 235, 235))
        else:
            for j, part in enumerate(label.split("\n")):
                text(d, (x + 43, y + 32 + (j - (label.count("\n")) / 2) * 18), part, 15, fill=(240, 240, 240), anchor="mm", bold=True)
    d.ellipse([ox + 150, oy + 450, ox + 230, oy + 530], fill=(30, 30, 32), outline=(100, 100, 100), width=3)
    a = math.radians(p.get("pot_angle", 300))
    d.line([(ox + 190, oy + 490), (ox + 190 + 30 * math.cos(a), oy + 490 + 30 * math.sin(a))], fill=(230, 230, 230), width=4)
    if p.get("sticker"):
        rounded(d, (ox + 250, oy + 450, ox + 366, oy + 540), 4, fill=(250, 220, 60))
        for j, line in enumerate(p["sticker"]):
            text(d, (ox + 258, oy + 460 + j * 18), line, 12, fill=(30, 30, 30))
    return img


def render_vibration_meter(p: Params, rng: random.Random) -> Image.Image:
    """Handheld vibration meter pressed against a bearing housing."""
    W, H = 560, 640
    img = panel((W, H), jitter((60, 100, 80), rng, 6), rng, grain=5)  # painted motor in the background
    d = ImageDraw.Draw(img)
    for x in range(0, W, 26):
        d.line([(x, 0), (x, H)], fill=(45, 80, 62), width=5)
    ox, oy = 130 + rng.randint(-10, 10), 60 + rng.randint(-10, 10)
    rounded(d, (ox + 8, oy + 10, ox + 308, oy + 530), 36, fill=(30, 30, 30))
    rounded(d, (ox, oy, ox + 300, oy + 520), 36, fill=(250, 200, 30), outline=(120, 90, 10), width=3)
    rounded(d, (ox + 30, oy + 60, ox + 270, oy + 220), 8, fill=(170, 190, 160), outline=(60, 60, 60), width=3)
    seven_seg(d, (ox + 45, oy + 90), p["reading"], 80, (20, 25, 20), off=(155, 175, 145))
    text(d, (ox + 255, oy + 200), p.get("unit", "mm/s RMS"), 16, fill=(20, 25, 20), anchor="rs")
    if p.get("alarm"):
        rounded(d, (ox + 40, oy + 70, ox + 120, oy + 92), 4, fill=(20, 25, 20))
        text(d, (ox + 80, oy + 81), "ALARM", 14, fill=(170, 190, 160), anchor="mm", bold=True)
    text(d, (ox + 150, oy + 32), "VIBRO-CHECK 200", 17, fill=(40, 40, 40), anchor="mm", bold=True)
    for i, label in enumerate(("MODE", "HOLD", "ON/OFF")):
        x = ox + 30 + i * 85
        bevel(d, (x, oy + 260, x + 70, oy + 310), 12, (60, 60, 65))
        text(d, (x + 35, oy + 285), label, 13, fill=(240, 240, 240), anchor="mm")
    text(d, (ox + 150, oy + 360), p.get("point", "MOTOR DE  H"), 18, fill=(40, 40, 40), anchor="mm")
    d.rectangle([ox + 135, oy + 520, ox + 165, oy + 600], fill=(150, 150, 150))
    return img


# ============================================================================================ POS


_ITEMS = ("Espresso", "Latte 12oz", "Croissant", "Bagel + CC", "Orange juice", "Muffin", "Sandwich", "Water 0.5L", "Tea", "Cookie")


def render_pos_dialog(p: Params, rng: random.Random) -> Image.Image:
    """Screenshot of the POS app with a modal error dialog over the sales screen."""
    W, H = 1024, 640
    dark = p.get("theme", "light") == "dark"
    base = (34, 36, 42) if dark else (244, 245, 247)
    fg = (230, 230, 235) if dark else (30, 32, 38)
    accent = tuple(p.get("accent", (0, 120, 215)))
    img = Image.new("RGB", (W, H), base)
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, W, 56], fill=accent)
    text(d, (20, 28), "PayStation POS", 22, fill=(255, 255, 255), anchor="lm", bold=True)
    text(d, (260, 28), f"Store #{rng.randint(100, 999):04d}  |  Lane {rng.randint(1, 9)}", 16, fill=(230, 240, 255), anchor="lm")
    text(d, (W - 20, 28), f"{rng.randint(8, 20):02d}:{rng.randint(0, 59):02d}", 18, fill=(255, 255, 255), anchor="rm")
    wifi_icon(d, W - 110, 36, 26, (255, 255, 255), crossed=p.get("offline", False))
    # background: cart + product grid (incidental)
    panel_c = (44, 47, 54) if dark else (255, 255, 255)
    d.rectangle([16, 72, 380, H - 16], fill=panel_c)
    total = 0.0
    for i in range(rng.randint(3, 7)):
        item, price = rng.choice(_ITEMS), rng.randint(150, 950) / 100
        total += price
        text(d, (30, 96 + i * 34), item, 17, fill=fg)
        text(d, (366, 96 + i * 34), f"{price:.2f}", 17, fill=fg, anchor="ra")
    text(d, (30, H - 60), "TOTAL", 20, fill=fg, bold=True)
    text(d, (366, H - 60), f"{total:.2f}", 20, fill=fg, anchor="ra", bold=True)
    for i in range(12):
        x, y = 400 + (i % 4) * 153, 72 + (i // 4) * 120
        rounded(d, (x, y, x + 140, y + 108), 10, fill=mix(accent, panel_c, 0.75))
        text(d, (x + 70, y + 54), _ITEMS[(i + rng.randint(0, 9)) % len(_ITEMS)], 15, fill=fg, anchor="mm")
    # dim overlay + dialog
    img = Image.blend(img, Image.new("RGB", (W, H), (0, 0, 0)), 0.45)
    d = ImageDraw.Draw(img)
    dw, dh = 560, 320
    x0, y0 = (W - dw) // 2, (H - dh) // 2
    rounded(d, (x0 + 6, y0 + 8, x0 + dw + 6, y0 + dh + 8), 14, fill=(0, 0, 0))
    rounded(d, (x0, y0, x0 + dw, y0 + dh), 14, fill=(52, 55, 63) if dark else (255, 255, 255))
    icon = p.get("icon", "error")
    {"error": error_icon, "warning": warning_icon, "info": info_icon}[icon](d, x0 + 60, y0 + 70, 60)
    if icon == "lock":
        lock_icon(d, x0 + 60, y0 + 70, 60, (200, 40, 40))
    text(d, (x0 + 110, y0 + 50), p["title"], 24, fill=fg, bold=True)
    y = y0 + 92
    for line in wrap(p["message"], 18, dw - 140):
        text(d, (x0 + 110, y), line, 18, fill=fg)
        y += 26
    text(d, (x0 + 110, y + 10), f"Error code: {p['code']}", 16, fill=mix(fg, (128, 128, 128), 0.4))
    for i, label in enumerate(p.get("buttons", ("Retry", "Cancel"))):
        bx = x0 + dw - 150 - i * 150
        primary = i == 0
        rounded(d, (bx, y0 + dh - 66, bx + 130, y0 + dh - 22), 8, fill=accent if primary else None, outline=accent, width=2)
        text(d, (bx + 65, y0 + dh - 44), label, 17, fill=(255, 255, 255) if primary else accent, anchor="mm")
    return img


def render_pos_terminal(p: Params, rng: random.Random) -> Image.Image:
    """Handheld card terminal (photo-like): small colour screen, keypad, contactless LEDs."""
    W, H = 520, 800
    img = panel((W, H), jitter(tuple(p.get("desk", (160, 130, 100))), rng, 8), rng, grain=6)
    d = ImageDraw.Draw(img)
    ox, oy = 95 + rng.randint(-10, 10), 40 + rng.randint(-8, 8)
    rounded(d, (ox + 10, oy + 14, ox + 340, oy + 724), 40, fill=shade((160, 130, 100), 0.55))
    rounded(d, (ox, oy, ox + 330, oy + 710), 40, fill=(35, 36, 40))
    text(d, (ox + 165, oy + 28), "PayStation M3", 15, fill=(180, 180, 185), anchor="mm")
    for i in range(4):
        led(img, (ox + 120 + i * 30, oy + 56), 5, LED_COLORS["green"], i < p.get("contactless_lit", 0))
    d = ImageDraw.Draw(img)
    sx0, sy0, sx1, sy1 = ox + 25, oy + 80, ox + 305, oy + 330
    scr = tuple(p.get("screen", (250, 250, 250)))
    d.rectangle([sx0, sy0, sx1, sy1], fill=scr)
    hdr = tuple(p.get("header", (200, 30, 30)))
    d.rectangle([sx0, sy0, sx1, sy0 + 40], fill=hdr)
    text(d, ((sx0 + sx1) / 2, sy0 + 20), p["heading"], 18, fill=(255, 255, 255), anchor="mm", bold=True)
    battery_icon(d, sx1 - 42, sy0 + 12, 26, p.get("battery", 0.7), (255, 255, 255))
    icon = p.get("icon")
    if icon == "lock":
        lock_icon(d, (sx0 + sx1) / 2, sy0 + 95, 60, hdr)
    elif icon == "card":
        rounded(d, ((sx0 + sx1) / 2 - 45, sy0 + 62, (sx0 + sx1) / 2 + 45, sy0 + 122), 6, fill=(40, 90, 170))
        d.rectangle([(sx0 + sx1) / 2 - 30, sy0 + 80, (sx0 + sx1) / 2 - 10, sy0 + 96], fill=(230, 200, 90))
    elif icon == "battery":
        battery_icon(d, (sx0 + sx1) / 2 - 40, sy0 + 70, 80, 0.08, hdr)
    elif icon == "key":
        d.ellipse([(sx0 + sx1) / 2 - 40, sy0 + 70, (sx0 + sx1) / 2 - 10, sy0 + 100], outline=hdr, width=6)
        d.line([((sx0 + sx1) / 2 - 12, sy0 + 85), ((sx0 + sx1) / 2 + 40, sy0 + 85)], fill=hdr, width=6)
        d.line([((sx0 + sx1) / 2 + 30, sy0 + 85), ((sx0 + sx1) / 2 + 30, sy0 + 100)], fill=hdr, width=6)
    y = sy0 + 140
    for line in p["lines"]:
        for part in wrap(line, 18, sx1 - sx0 - 20):
            text(d, ((sx0 + sx1) / 2, y), part, 18, fill=(30, 30, 30), anchor="mm")
            y += 26
    keys = "123456789*0#"
    for i, k in enumerate(keys):
        x = ox + 35 + (i % 3) * 90
        y = oy + 360 + (i // 3) * 62
        bevel(d, (x, y, x + 76, y + 48), 12, (70, 72, 78))
        text(d, (x + 38, y + 24), k, 20, fill=(240, 240, 240), anchor="mm", bold=True)
    for i, col in enumerate(((200, 40, 35), (240, 200, 40), (40, 160, 70))):
        x = ox + 35 + i * 90
        bevel(d, (x, oy + 612, x + 76, oy + 660), 12, col)
    d.rectangle([ox + 60, oy + 690, ox + 270, oy + 698], fill=(10, 10, 10))  # chip card slot
    return img


# ============================================================================================ others (out of KB)


def render_appliance(p: Params, rng: random.Random) -> Image.Image:
    """Generic appliance display (for out-of-KB queries): body, screen with text, a few buttons."""
    W, H = 640, 520
    img = panel((W, H), jitter(tuple(p.get("wall", (210, 205, 195))), rng, 6), rng)
    d = ImageDraw.Draw(img)
    body = tuple(p.get("body", (40, 40, 44)))
    rounded(d, (60, 50, 580, 470), 26, fill=body, outline=shade(body, 0.6), width=3)
    text(d, (320, 84), p["label"], 20, fill=mix(body, (255, 255, 255), 0.75), anchor="mm", bold=True)
    kind = p.get("screen", "lcd")
    if kind == "lcd":
        bg, on = BACKLIGHTS[p.get("backlight", "blue")]
        lcd = dot_lcd(p["lines"], p.get("cols", 16), bg=bg, on=on, dot=4)
        img.paste(lcd, ((W - lcd.width) // 2, 130))
    elif kind == "seg":
        d.rectangle([170, 130, 470, 260], fill=(10, 10, 10))
        seven_seg(d, (195, 150), p["lines"][0], 90, tuple(p.get("seg_color", (255, 60, 30))), off=(35, 15, 12))
    else:  # colour OLED-ish
        d.rectangle([130, 120, 510, 300], fill=(15, 15, 20))
        for j, line in enumerate(p["lines"]):
            text(d, (320, 160 + j * 40), line, 26 if j == 0 else 20, fill=tuple(p.get("fg", (255, 255, 255))), anchor="mm", bold=j == 0)
    for i in range(p.get("buttons", 3)):
        x = 150 + i * 120
        bevel(d, (x, 360, x + 90, 420), 14, (90, 92, 98))
    for i, (color, state) in enumerate(p.get("leds", [])):
        led(img, (520, 150 + i * 40), 8, LED_COLORS[color], _is_on(state))
    return img


SCENES: dict[str, Callable[[Params, random.Random], Image.Image]] = {
    "printer_lcd": render_printer_lcd,
    "mfp_screen": render_mfp_screen,
    "jam_diagram": render_jam_diagram,
    "print_defect": render_print_defect,
    "manual_page": render_manual_page,
    "fuser_figure": render_fuser_figure,
    "hvac_board": render_hvac_board,
    "thermostat": render_thermostat,
    "condenser_coil": render_condenser_coil,
    "manifold": render_manifold,
    "phase_monitor": render_phase_monitor,
    "filter": render_filter,
    "pump_gauges": render_pump_gauges,
    "pump_schematic": render_pump_schematic,
    "vfd": render_vfd,
    "vibration_meter": render_vibration_meter,
    "pos_dialog": render_pos_dialog,
    "pos_terminal": render_pos_terminal,
    "appliance": render_appliance,
}


def render(scene: str, p: Params, rng: random.Random) -> Image.Image:
    """Render a named scene to an RGB image."""
    img = SCENES[scene](p, rng)
    return img.convert("RGB") if img.mode != "RGB" else img


def blur_soft(img: Image.Image, radius: float) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius))
