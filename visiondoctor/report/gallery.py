"""Predictions beside ground truth: a few evaluated images, GT left, predictions right."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from visiondoctor.report import plots
from visiondoctor.report.detection_sections import display_threshold
from visiondoctor.report.formatting import count
from visiondoctor.report.inputs import cfg, confined, finite, read_config, read_json, read_json_file
from visiondoctor.report.sections import Figure, Paragraph, Section, Table, register_section
from visiondoctor.rundir import RunDir

NUM_IMAGES = 8
MAX_BOXES = 40  # per tile, highest scores first: a collapsed model's 2400 boxes would hide the picture
THUMBNAIL = 320  # px, longest side


def load_ground_truth(run: RunDir) -> dict[str, Any] | None:
    """gt.json from the run dir, or the COCO file that config.yaml's data.path names."""
    gt = read_json(run, "gt.json")
    if gt is None:
        path = cfg(read_config(run), "data.path")
        if isinstance(path, str) and path.endswith(".json") and Path(path).is_file():
            gt = read_json_file(Path(path))
            if isinstance(gt, dict):
                gt.setdefault("image_root", str(Path(path).parent))
    return gt if isinstance(gt, dict) and isinstance(gt.get("images"), list) else None


def image_roots(run: RunDir, gt: dict[str, Any]) -> list[Path]:
    """Folders the image file names may be relative to, most specific first: gt.json's
    image_root, the evaluated split's annotation folder and the dataset root from
    data_summary.json, config.yaml's data.path."""
    summary = read_json(run, "data_summary.json") or {}
    split = cfg(read_config(run), "eval.split", "val")
    source = cfg(summary, f"splits.{split}.source") if isinstance(summary, dict) else None
    candidates = [gt.get("image_root"), source, summary.get("root") if isinstance(summary, dict) else None,
                  cfg(read_config(run), "data.path")]
    roots = []
    for c in candidates:
        if isinstance(c, str) and c:
            p = Path(c) if Path(c).is_absolute() else run.path / c
            p = p.parent if p.is_file() else p
            if p not in roots:
                roots.append(p)
    return roots


def category_names(run: RunDir, gt: dict[str, Any]) -> dict[int, str]:
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt.get("categories") or [] if isinstance(c, dict) and "id" in c}
    cats = read_json(run, "categories.json")
    if isinstance(cats, dict) and not names:
        names = dict(zip(cats.get("dataset_ids", []), map(str, cats.get("names", []))))
    return names


@register_section(70, title="Predictions beside ground truth", needs=("predictions.json", "gt.json"))
def predictions_section(run: RunDir) -> Section | None:
    preds = read_json(run, "predictions.json")
    gt = load_ground_truth(run)
    if not isinstance(preds, list) or gt is None:
        return None
    threshold = display_threshold(run, read_json(run, "detection_stats.json") or {})
    names = category_names(run, gt)
    color = {cid: i for i, cid in enumerate(sorted(names))}
    roots = image_roots(run, gt)
    images = sorted((im for im in gt["images"] if isinstance(im, dict) and "id" in im), key=lambda im: im["id"])
    if not images:
        return None
    picks = [images[i] for i in np.linspace(0, len(images) - 1, min(NUM_IMAGES, len(images))).round().astype(int)]
    picks = list({im["id"]: im for im in picks}.values())

    gt_by_image: dict[Any, list] = {}
    for a in gt.get("annotations") or []:
        if isinstance(a, dict):
            gt_by_image.setdefault(a.get("image_id"), []).append(a)
    all_by_image: dict[Any, list] = {}
    for p in preds:
        if isinstance(p, dict) and finite(p.get("score")) is not None:
            all_by_image.setdefault(p.get("image_id"), []).append(p)
    pred_by_image = {k: [p for p in v if p["score"] >= threshold] for k, v in all_by_image.items()}

    root = next((r for r in roots if any(_find(r, str(im.get("file_name", ""))) for im in picks)),
                roots[0] if roots else None)
    pairs, rows, missing = [], [], 0
    for im in picks:
        pixels = _load(root, str(im.get("file_name", "")))
        missing += pixels is None
        w, h = float(im.get("width") or 0), float(im.get("height") or 0)
        if pixels is not None and not (w and h):
            h, w = float(pixels.shape[0]), float(pixels.shape[1])
        w, h = w or 1.0, h or 1.0
        gts = [a for a in gt_by_image.get(im["id"], []) if _box(a)]
        dets = sorted((p for p in pred_by_image.get(im["id"], []) if _box(p)), key=lambda p: -p["score"])
        title = f"{im.get('file_name', im['id'])}"
        left = plots.Tile(f"GT · {title}", pixels, w, h, [_box(a) for a in gts],
                          [names.get(a.get("category_id"), str(a.get("category_id"))) for a in gts],
                          [color.get(a.get("category_id"), 0) for a in gts])
        shown = dets[:MAX_BOXES]
        best = max((p["score"] for p in all_by_image.get(im["id"], [])), default=None)
        right_title = f"predictions ≥ {threshold:g}" if dets else (
            f"none ≥ {threshold:g} (best score {best:.2f})" if best is not None else "no predictions")
        right = plots.Tile(right_title, pixels, w, h, [_box(p) for p in shown],
                           [f"{plots.shorten(names.get(p.get('category_id'), p.get('category_id')), 16)} {p['score']:.2f}" for p in shown],
                           [color.get(p.get("category_id"), 0) for p in shown])
        pairs.append((left, right))
        rows.append([im["id"], im.get("file_name", ""), len(gts), len(dets)])
    blocks: list[Any] = [
        Figure("predictions", plots.tile_grid(pairs, f"Ground truth (left) and predictions with score ≥ {threshold:g} (right)"),
               caption=f"{len(pairs)} of {len(images)} evaluated images, evenly spaced by image id; "
                       f"at most {MAX_BOXES} predictions drawn per image."),
        Table(["image id", "file", "GT boxes", f"predictions ≥ {threshold:g}"], rows),
    ]
    if missing:
        where = f" under {root}" if root else " (no image_root in gt.json, no dataset root in data_summary.json or config.yaml)"
        blocks.append(Paragraph(f"{count(missing, 'image file')} not found{where}; boxes drawn on a blank canvas.", "note"))
    return Section("Predictions beside ground truth", blocks)


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
