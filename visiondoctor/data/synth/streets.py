"""Deterministic synthetic road scenes for segmentation and anomaly segmentation.

`generate_streets(out)` draws perspective road scenes — sky, buildings with windows,
walls, fences, road with dashed lines, sidewalks, grass and trees, cars, pedestrians,
poles with traffic signs, bins ("other") — and writes them in the StreetHazards layout
(PNG labels hold label+1), so `read_streethazards` loads them like the real dataset.
Only the TEST split holds anomalies (label 13): stars, many-vertex blobs, rings and
spiky shapes in saturated magenta / cyan / violet / pink with stripe or checker textures,
shapes and colours no training image contains. Same arguments -> identical files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from visiondoctor.data.formats.streethazards import SPLITS
from visiondoctor.data.synth import register_generator

CLASSES = [
    "sky", "building", "fence", "other", "pedestrian", "pole", "road line",
    "road", "sidewalk", "vegetation", "car", "wall", "traffic sign", "anomaly",
]
(SKY, BUILDING, FENCE, OTHER, PEDESTRIAN, POLE, ROAD_LINE, ROAD, SIDEWALK, VEGETATION,
 CAR, WALL, SIGN, ANOMALY) = range(14)

# Training palettes (RGB). Anomaly colours are saturated hues none of these come near.
BUILDING_COLOURS = [(120, 90, 70), (150, 120, 90), (170, 160, 140), (110, 110, 115), (140, 70, 50), (190, 180, 160)]
CAR_COLOURS = [(170, 30, 30), (30, 50, 140), (220, 220, 220), (30, 30, 30), (150, 150, 155), (60, 90, 60), (120, 100, 60)]
CLOTHES = [(40, 40, 60), (120, 30, 30), (30, 70, 120), (90, 90, 90), (150, 130, 100), (60, 80, 40)]
SKIN = [(230, 190, 160), (190, 140, 100), (120, 80, 50)]
ANOMALY_COLOURS = [(230, 0, 230), (0, 230, 230), (140, 0, 255), (255, 0, 140), (0, 255, 170)]


#: Named sets of arguments (the CLI's `--preset`).
PRESETS: dict[str, dict[str, int]] = {
    "quick": {"num_train": 48, "num_val": 12, "num_test": 16},
}


class _Canvas:
    """An RGB image and its label map, drawn together so they can never disagree."""

    def __init__(self, w: int, h: int):
        self.image = Image.new("RGB", (w, h))
        self.label = Image.new("L", (w, h))
        self.di = ImageDraw.Draw(self.image)
        self.dl = ImageDraw.Draw(self.label)

    def polygon(self, pts, colour, label):
        pts = [(float(x), float(y)) for x, y in pts]
        self.di.polygon(pts, fill=tuple(colour))
        self.dl.polygon(pts, fill=label)

    def rect(self, box, colour, label):
        self.polygon([(box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3])], colour, label)

    def ellipse(self, box, colour, label):
        self.di.ellipse(list(box), fill=tuple(colour))
        self.dl.ellipse(list(box), fill=label)

    def line(self, pts, colour, label, width):
        w = max(1, int(round(width)))
        self.di.line([tuple(p) for p in pts], fill=tuple(colour), width=w)
        self.dl.line([tuple(p) for p in pts], fill=label, width=w)


def _jitter(rng: np.random.Generator, colour, amount: int = 18) -> tuple[int, int, int]:
    c = np.asarray(colour) + rng.integers(-amount, amount + 1, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


class _Scene:
    """Perspective geometry: depth t in (0, 1] maps to row y(t); sizes scale with t."""

    def __init__(self, rng: np.random.Generator, w: int, h: int):
        self.rng, self.w, self.h = rng, w, h
        self.yh = h * rng.uniform(0.33, 0.48)
        self.xv = w * rng.uniform(0.38, 0.62)
        self.road = w * rng.uniform(0.32, 0.55)  # road half-width at the bottom row
        self.walk = w * rng.uniform(0.12, 0.25)  # sidewalk width at the bottom row

    def y(self, t: float) -> float:
        return self.yh + t * (self.h - self.yh)

    def x(self, t: float, offset: float) -> float:
        """Column of a line running `offset` (bottom-row pixels, signed) from the road centre."""
        return self.xv + offset * t


def _draw_background(c: _Canvas, s: _Scene, rng) -> None:
    w, h = s.w, s.h
    top = np.array(_jitter(rng, (90, 140, 200), 25))
    bottom = np.array(_jitter(rng, (180, 200, 220), 20))
    for row in range(int(math.ceil(s.yh)) + 1):
        f = row / max(s.yh, 1)
        c.di.line([(0, row), (w, row)], fill=tuple(int(v) for v in top * (1 - f) + bottom * f))
    c.dl.rectangle([0, 0, w, int(math.ceil(s.yh))], fill=SKY)
    grass = _jitter(rng, (70, 110, 50), 15)
    c.rect((0, s.yh, w, h), grass, VEGETATION)
    for side in (-1, 1):
        outer = side * (s.road + s.walk)
        c.polygon([(s.xv, s.yh), (s.x(1, side * s.road), h), (s.x(1, outer), h)],
                  _jitter(rng, (165, 160, 150), 15), SIDEWALK)
    c.polygon([(s.xv, s.yh), (s.x(1, -s.road), h), (s.x(1, s.road), h)], _jitter(rng, (80, 80, 85), 12), ROAD)
    # dashed centre line, dashes shorter with distance
    colour = (230, 230, 230) if rng.random() < 0.7 else (220, 190, 40)
    t = 0.08
    while t < 1.0:
        t2 = min(1.0, t * 1.35)
        c.polygon([(s.x(t, -1.2), s.y(t)), (s.x(t, 1.2), s.y(t)), (s.x(t2, 1.2), s.y(t2)), (s.x(t2, -1.2), s.y(t2))],
                  colour, ROAD_LINE)
        t = t2 * 1.35


def _facade(c: _Canvas, s: _Scene, rng, side: int, t1: float, t2: float, height: float, kind: int) -> None:
    """A plane parallel to the road standing on the sidewalk's outer edge, from depth t1 to t2."""
    off = side * (s.road + s.walk)
    b1, b2 = (s.x(t1, off), s.y(t1)), (s.x(t2, off), s.y(t2))
    top1, top2 = (b1[0], b1[1] - height * t1), (b2[0], b2[1] - height * t2)
    if kind == FENCE:
        n = max(2, int((t2 - t1) * 40))
        colour = _jitter(rng, (100, 90, 80), 12)
        for i in range(n + 1):
            f = i / n
            p = (b1[0] + f * (b2[0] - b1[0]), b1[1] + f * (b2[1] - b1[1]))
            hh = height * (t1 + f * (t2 - t1))
            c.line([p, (p[0], p[1] - hh)], colour, FENCE, max(1, 1.5 * (t1 + f * (t2 - t1))))
        c.line([top1, top2], colour, FENCE, max(1, 2 * t2))
        return
    base = _jitter(rng, BUILDING_COLOURS[rng.integers(len(BUILDING_COLOURS))] if kind == BUILDING else (120, 125, 140), 12)
    c.polygon([b1, b2, top2, top1], base, kind)
    if kind == BUILDING:  # rows of darker windows, still "building"
        win = tuple(int(v * 0.45) for v in base)
        cols, rows = max(1, int((t2 - t1) * 12)), max(1, int(height / 14))
        for i in range(cols):
            for j in range(rows):
                fa, fb = (i + 0.25) / cols, (i + 0.7) / cols
                ga, gb = (j + 0.3) / rows, (j + 0.7) / rows
                quad = []
                for fx, gy in ((fa, ga), (fb, ga), (fb, gb), (fa, gb)):
                    bx, by = b1[0] + fx * (b2[0] - b1[0]), b1[1] + fx * (b2[1] - b1[1])
                    tt = t1 + fx * (t2 - t1)
                    quad.append((bx, by - gy * height * tt))
                c.polygon(quad, win, BUILDING)


def _tree(c: _Canvas, s: _Scene, rng, side: int, t: float) -> None:
    x, y = s.x(t, side * (s.road + s.walk * 0.85)), s.y(t)
    hgt, r = s.h * 0.5 * t, s.h * 0.16 * t * rng.uniform(0.8, 1.3)
    c.line([(x, y), (x, y - hgt * 0.6)], _jitter(rng, (80, 60, 40), 10), VEGETATION, max(1, 3 * t))
    c.ellipse((x - r, y - hgt - r * 0.6, x + r, y - hgt + r), _jitter(rng, (50, 100, 40), 20), VEGETATION)


def _pole(c: _Canvas, s: _Scene, rng, side: int, t: float) -> None:
    x, y = s.x(t, side * (s.road + s.walk * 0.15)), s.y(t)
    hgt = s.h * 0.55 * t
    c.line([(x, y), (x, y - hgt)], _jitter(rng, (120, 120, 120), 10), POLE, max(1, 2.5 * t))
    if rng.random() < 0.7:
        r = max(1.5, s.h * 0.06 * t)
        cx, cy = x, y - hgt
        shape = rng.integers(3)
        colour = [(200, 20, 20), (20, 60, 180), (230, 200, 30), (240, 240, 240)][rng.integers(4)]
        if shape == 0:
            c.ellipse((cx - r, cy - r, cx + r, cy + r), colour, SIGN)
        elif shape == 1:
            c.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], colour, SIGN)
        else:
            c.rect((cx - r, cy - r * 0.7, cx + r, cy + r * 0.7), colour, SIGN)


def _car(c: _Canvas, s: _Scene, rng, t: float) -> None:
    u = rng.uniform(-0.75, 0.75)
    x, y = s.x(t, u * s.road), s.y(t)
    wdt = s.w * 0.3 * t * rng.uniform(0.85, 1.15)
    hgt = wdt * rng.uniform(0.45, 0.6)
    body = _jitter(rng, CAR_COLOURS[rng.integers(len(CAR_COLOURS))], 10)
    c.rect((x - wdt / 2, y - hgt * 0.65, x + wdt / 2, y - hgt * 0.08), body, CAR)
    c.rect((x - wdt * 0.35, y - hgt, x + wdt * 0.35, y - hgt * 0.6), body, CAR)
    c.rect((x - wdt * 0.3, y - hgt * 0.95, x + wdt * 0.3, y - hgt * 0.65), (40, 50, 60), CAR)
    wr = hgt * 0.16
    for wx in (x - wdt * 0.35, x + wdt * 0.35):
        c.ellipse((wx - wr, y - wr * 2, wx + wr, y), (20, 20, 20), CAR)
    lr = max(1, wdt * 0.06)
    for lx in (x - wdt * 0.44, x + wdt * 0.44 - lr):
        c.rect((lx, y - hgt * 0.5, lx + lr, y - hgt * 0.38), (200, 30, 20), CAR)


def _pedestrian(c: _Canvas, s: _Scene, rng, side: int, t: float) -> None:
    x, y = s.x(t, side * (s.road + s.walk * rng.uniform(0.2, 0.8))), s.y(t)
    hgt = s.h * 0.32 * t * rng.uniform(0.85, 1.1)
    wdt = hgt * 0.28
    clothes = _jitter(rng, CLOTHES[rng.integers(len(CLOTHES))], 10)
    c.rect((x - wdt * 0.35, y - hgt * 0.45, x + wdt * 0.35, y), _jitter(rng, (40, 40, 50), 8), PEDESTRIAN)
    c.rect((x - wdt / 2, y - hgt * 0.82, x + wdt / 2, y - hgt * 0.42), clothes, PEDESTRIAN)
    r = hgt * 0.09
    c.ellipse((x - r, y - hgt, x + r, y - hgt + 2 * r), SKIN[rng.integers(len(SKIN))], PEDESTRIAN)


def _other(c: _Canvas, s: _Scene, rng, side: int, t: float) -> None:
    x, y = s.x(t, side * (s.road + s.walk * rng.uniform(0.3, 0.9))), s.y(t)
    wdt, hgt = s.w * 0.06 * t, s.h * 0.09 * t
    colour = [(60, 80, 50), (90, 70, 50), (70, 70, 75)][rng.integers(3)]
    c.rect((x - wdt / 2, y - hgt, x + wdt / 2, y), _jitter(rng, colour, 10), OTHER)


def _anomaly(c: _Canvas, s: _Scene, rng, t: float) -> None:
    """An object unlike anything in training: shape and colour both new; textured."""
    u = rng.uniform(-0.8, 0.8)
    x, y = s.x(t, u * s.road), s.y(t)
    r = s.w * 0.12 * t * rng.uniform(0.7, 1.6)
    cy = y - r
    kind = rng.integers(4)
    if kind == 0:  # star
        n = int(rng.integers(5, 9))
        pts = [(x + (r if i % 2 == 0 else r * 0.45) * math.cos(math.pi * i / n + 0.3),
                cy + (r if i % 2 == 0 else r * 0.45) * math.sin(math.pi * i / n + 0.3)) for i in range(2 * n)]
    elif kind == 1:  # many-vertex blob
        n = 14
        radii = r * rng.uniform(0.55, 1.0, n)
        pts = [(x + radii[i] * math.cos(2 * math.pi * i / n), cy + radii[i] * math.sin(2 * math.pi * i / n)) for i in range(n)]
    elif kind == 2:  # spiky urchin
        n = int(rng.integers(9, 15))
        pts = [(x + (r if i % 2 == 0 else r * 0.25) * math.cos(math.pi * i / n),
                cy + (r if i % 2 == 0 else r * 0.25) * math.sin(math.pi * i / n)) for i in range(2 * n)]
    else:
        pts = None
    ca, cb = (ANOMALY_COLOURS[i] for i in rng.choice(len(ANOMALY_COLOURS), 2, replace=False))
    # Texture: paint the shape in one colour, then stripes of the second colour clipped to it.
    shape = Image.new("L", c.image.size)
    ds = ImageDraw.Draw(shape)
    if pts is None:  # ring
        ds.ellipse([x - r, cy - r, x + r, cy + r], fill=255)
        ds.ellipse([x - r * 0.5, cy - r * 0.5, x + r * 0.5, cy + r * 0.5], fill=0)
    else:
        ds.polygon(pts, fill=255)
    m = np.asarray(shape) > 0
    if not m.any():
        return
    yy, xx = np.mgrid[: m.shape[0], : m.shape[1]]
    period = max(2, int(r / 2))
    pattern = ((xx // period + yy // period) % 2 == 0) if rng.random() < 0.5 else (((xx + yy) // period) % 2 == 0)
    img = np.asarray(c.image).copy()
    img[m & pattern] = ca
    img[m & ~pattern] = cb
    lab = np.asarray(c.label).copy()
    lab[m] = ANOMALY
    c.image = Image.fromarray(img)
    c.label = Image.fromarray(lab)
    c.di, c.dl = ImageDraw.Draw(c.image), ImageDraw.Draw(c.label)


def render_scene(rng: np.random.Generator, width: int, height: int, anomalies: int = 0) -> tuple[Image.Image, np.ndarray]:
    """One scene: (RGB image, label array with labels 0..13)."""
    c = _Canvas(width, height)
    s = _Scene(rng, width, height)
    _draw_background(c, s, rng)
    for side in (-1, 1):  # roadside planes from far to near, with gaps
        t = rng.uniform(0.02, 0.08)
        while t < 1.0:
            t2 = min(1.05, t * rng.uniform(1.3, 1.9))
            kind = rng.choice([BUILDING, BUILDING, BUILDING, WALL, FENCE, -1])
            if kind == BUILDING:
                _facade(c, s, rng, side, t, t2, s.h * rng.uniform(0.7, 1.6), BUILDING)
            elif kind in (WALL, FENCE):
                _facade(c, s, rng, side, t, t2, s.h * rng.uniform(0.12, 0.25), int(kind))
            t = t2
    # objects sorted far -> near so nearer ones occlude
    objects = []
    for _ in range(rng.integers(0, 4)):
        objects.append((rng.uniform(0.15, 1.0), "tree", rng.choice([-1, 1])))
    for _ in range(rng.integers(0, 4)):
        objects.append((rng.uniform(0.2, 1.0), "pole", rng.choice([-1, 1])))
    for _ in range(rng.integers(0, 4)):
        objects.append((rng.uniform(0.2, 1.0), "car", 0))
    for _ in range(rng.integers(0, 4)):
        objects.append((rng.uniform(0.25, 1.0), "pedestrian", rng.choice([-1, 1])))
    for _ in range(rng.integers(0, 3)):
        objects.append((rng.uniform(0.25, 1.0), "other", rng.choice([-1, 1])))
    for _ in range(anomalies):
        objects.append((rng.uniform(0.3, 1.0), "anomaly", 0))
    for t, kind, side in sorted(objects, key=lambda o: o[0]):
        if kind == "tree":
            _tree(c, s, rng, side, t)
        elif kind == "pole":
            _pole(c, s, rng, side, t)
        elif kind == "car":
            _car(c, s, rng, t)
        elif kind == "pedestrian":
            _pedestrian(c, s, rng, side, t)
        elif kind == "other":
            _other(c, s, rng, side, t)
        else:
            _anomaly(c, s, rng, t)
    # photometric variation and sensor noise on the image only
    img = np.asarray(c.image.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    img = img * rng.uniform(0.7, 1.2) + rng.uniform(-15, 15, 3)
    img += rng.normal(0, 4.0, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), np.asarray(c.label, dtype=np.uint8)


@register_generator("streets", marker="streets.json")
def generate_streets(
    out_dir: str | Path,
    num_train: int = 400,
    num_val: int = 60,
    num_test: int = 100,
    image_size: int = 128,
    seed: int = 0,
    *,
    height: int | None = None,
    preset: str | None = None,
) -> dict[str, Path]:
    """Write train / validation / test splits in the StreetHazards layout under `out_dir`;
    return split -> images folder. Images are `image_size` wide and `height` (default: square) high."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown streets preset {preset!r}; available: {', '.join(PRESETS)}")
        num_train, num_val, num_test = (PRESETS[preset][k] for k in ("num_train", "num_val", "num_test"))
    out = Path(out_dir)
    width, height = image_size, height or image_size
    written = {}
    for split, count, code in (("train", num_train, 1), ("val", num_val, 2), ("test", num_test, 3)):
        top, sub = SPLITS[split]
        img_dir = out / top / "images" / sub / "synth"
        ann_dir = out / top / "annotations" / sub / "synth"
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([seed, code, i])
            n_anom = int(rng.integers(1, 3)) if split == "test" else 0
            image, label = render_scene(rng, width, height, n_anom)
            image.save(img_dir / f"{i:05d}.png")
            Image.fromarray(label + 1).save(ann_dir / f"{i:05d}.png")  # StreetHazards stores label + 1
        written[split] = img_dir
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    spec = {"generator": "visiondoctor streets", "num_train": num_train, "num_val": num_val, "num_test": num_test,
            "width": width, "height": height, "seed": seed}
    (out / "streets.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return written
