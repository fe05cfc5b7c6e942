"""Predictions beside ground truth, worst images first: the evaluated images with the lowest F1
at the display threshold (detection_per_image.json, see evaluation/detection_quality.py), ground
truth left and predictions right, every box coloured by what the matching made of it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from visiondoctor.report import plots
from visiondoctor.report.detection_inputs import (category_names, image_roots, load_ground_truth, read_per_image,
                                                  run_display_threshold)
from visiondoctor.report.formatting import count
from visiondoctor.report.inputs import confined, finite
from visiondoctor.report.sections import Figure, Paragraph, Section, Table, register_section
from visiondoctor.rundir import RunDir

NUM_IMAGES = 8
MAX_BOXES = 40  # per tile, highest scores first: a collapsed model's 2400 boxes would hide the picture
THUMBNAIL = 320  # px, longest side

# box type (evaluation/detection_quality.py) -> (legend, colour); ground-truth boxes take the colour
# of the prediction type that explains them (found = true positive)
BOX_STYLE = {
    "true_positive": ("true positive / found", "#2ca02c"),
    "classification": ("wrong class", "#9467bd"),
    "localisation": ("poor localisation (0.1 ≤ IoU < 0.5)", "#ff7f0e"),
    "both": ("wrong class and box off", "#8c564b"),
    "duplicate": ("duplicate", "#e377c2"),
    "background": ("background (nothing there)", "#d62728"),
    "missed": ("missed ground truth", "#1f77b4"),
    "crowd": ("crowd (ignored)", "#7f7f7f"),
}
GT_STYLE = {"found": "true_positive"}  # ground-truth type -> BOX_STYLE key
COUNT_COLUMNS = {"true_positive": "true positives", "classification": "wrong class", "localisation": "poor localisation",
                 "both": "wrong class and box off", "duplicate": "duplicates", "background": "background",
                 "missed": "missed"}


@register_section(70, title="Predictions beside ground truth", needs=("predictions.json", "gt.json"),
                  tasks=("detection",))
def predictions_section(run: RunDir) -> Section | None:
    quality = read_per_image(run)
    gt = load_ground_truth(run)
    if quality is None or gt is None or not quality.get("images"):
        return None
    threshold = finite(quality.get("score_threshold"))
    threshold = run_display_threshold(run) if threshold is None else threshold
    names = category_names(run, gt)
    worst = [e for e in quality["images"] if isinstance(e, dict) and "predictions" in e][:NUM_IMAGES]
    roots = image_roots(run, gt)
    root = next((r for r in roots if any(_find(r, str(e.get("file_name", ""))) for e in worst)),
                roots[0] if roots else None)
    sizes = {im.get("id"): (im.get("width"), im.get("height")) for im in gt["images"] if isinstance(im, dict)}
    pairs, missing = [], 0
    for rank, entry in enumerate(worst, start=1):
        pixels = _load(root, str(entry.get("file_name", "")))
        missing += pixels is None
        pairs.append(_tiles(rank, entry, pixels, sizes.get(entry.get("image_id"), (None, None)), names, threshold))
    drawn = {GT_STYLE.get(b.get("type"), b.get("type")) for e in worst
             for b in [*e.get("predictions", []), *e.get("ground_truth", [])] if isinstance(b, dict)}
    legend = {label: color for t, (label, color) in BOX_STYLE.items() if t in drawn}
    blocks: list[Any] = [
        Figure("predictions", plots.tile_grid(
            pairs, f"Worst images first: ground truth (left), predictions with score ≥ {threshold:g} (right)",
            legend=legend),
            caption=f"The {len(pairs)} of {quality.get('num_images', len(quality['images']))} evaluated images with the "
                    f"lowest F1 at score ≥ {threshold:g} (ties: more errors first), worst first. Boxes are coloured "
                    "by what the matching made of them (IoU 0.5, TIDE's error types); a ground-truth box takes the "
                    f"colour of the prediction that explains it. At most {MAX_BOXES} predictions drawn per image."),
        Table(["rank", "image id", "file", "F1", "GT boxes", f"predictions ≥ {threshold:g}"]
              + list(COUNT_COLUMNS.values()), _rows(worst),
              caption="Boxes per error type at the display threshold, worst image first"),
    ]
    if missing:
        where = f" under {root}" if root else " (no image_root in gt.json, no dataset root in data_summary.json or config.yaml)"
        blocks.append(Paragraph(f"{count(missing, 'image file')} not found{where}; boxes drawn on a blank canvas.", "note"))
    return Section("Predictions beside ground truth", blocks)


def _rows(entries: list[Any]) -> list[list[Any]]:
    rows = []
    for rank, e in enumerate(entries, start=1):
        counts = e.get("counts") or {}
        rows.append([rank, e.get("image_id"), e.get("file_name", ""), e.get("f1"), e.get("num_gt"),
                     e.get("num_predictions")] + [counts.get(t, 0) for t in COUNT_COLUMNS])
    return rows


def _tiles(rank: int, entry: dict[str, Any], pixels: np.ndarray | None, size: tuple[Any, Any],
           names: dict[int, str], threshold: float) -> tuple[plots.Tile, plots.Tile]:
    w, h = (finite(entry.get("width")) or finite(size[0]) or 0.0), (finite(entry.get("height")) or finite(size[1]) or 0.0)
    if pixels is not None and not (w and h):
        h, w = float(pixels.shape[0]), float(pixels.shape[1])
    w, h = w or 1.0, h or 1.0
    gts = [b for b in entry.get("ground_truth", []) if _box(b)]
    dets = sorted((b for b in entry.get("predictions", []) if _box(b) and finite(b.get("score")) is not None),
                  key=lambda b: -b["score"])[:MAX_BOXES]

    def name(b: dict[str, Any], limit: int = 16) -> str:
        return plots.shorten(names.get(b.get("category_id"), b.get("category_id")), limit)

    f1 = finite(entry.get("f1"))
    title = f"#{rank}" + (f" · F1 {f1:.2f}" if f1 is not None else "") + f" · {entry.get('file_name') or entry.get('image_id')}"
    left = plots.Tile(title, pixels, w, h, [_box(b) for b in gts], [name(b, 24) for b in gts],
                      [_color(GT_STYLE.get(b.get("type"), b.get("type"))) for b in gts],
                      ["--" if b.get("type") == "crowd" else "-" for b in gts])
    best = finite(entry.get("max_score"))
    right_title = f"predictions ≥ {threshold:g}" if dets else (
        f"none ≥ {threshold:g} (best score {best:.2f})" if best is not None else "no predictions")
    right = plots.Tile(right_title, pixels, w, h,
                       [_box(b) for b in dets], [f"{name(b)} {b['score']:.2f}" for b in dets],
                       [_color(b.get("type")) for b in dets],
                       ["--" if b.get("type") == "crowd" else "-" for b in dets])
    return left, right


def _color(box_type: Any) -> str:
    return BOX_STYLE.get(str(box_type), ("", "#000000"))[1]


def _box(record: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """COCO [x, y, w, h] -> (x1, y1, x2, y2), or None when malformed."""
    b = record.get("bbox")
    if not isinstance(b, (list, tuple)) or len(b) != 4 or any(finite(v) is None for v in b):
        return None
    x, y, w, h = map(float, b)
    return (x, y, x + w, y + h)


def _find(root: Path | None, file_name: str) -> Path | None:
    if root is None or not file_name:
        return None
    path = confined(root, file_name)
    return path if path is not None and path.is_file() else None


def _load(root: Path | None, file_name: str) -> np.ndarray | None:
    """The image as an RGB thumbnail, or None when it cannot be found or read."""
    path = _find(root, file_name)
    if path is None:
        return None
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((THUMBNAIL, THUMBNAIL))
            return np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
