"""Detection sections: data summary, metrics, per-class AP, confusion matrix, PR curves, detection
statistics. (Predictions beside ground truth: gallery.py; TIDE errors and score-IoU consistency:
analysis_sections.py.)"""
from __future__ import annotations

from typing import Any

import numpy as np

from visiondoctor.report import plots
from visiondoctor.report.detection_inputs import display_threshold, read_confusion
from visiondoctor.report.formatting import count, flatten
from visiondoctor.report.inputs import finite, read_json
from visiondoctor.report.sections import Figure, Paragraph, Section, Table, register_section
from visiondoctor.rundir import RunDir

METRICS = {
    "map": "AP averaged over IoU 0.50:0.95 (COCO primary metric)",
    "map50": "AP at IoU 0.50",
    "map75": "AP at IoU 0.75",
    "map_small": "AP on small objects (area < 32² px)",
    "map_medium": "AP on medium objects (32² – 96² px)",
    "map_large": "AP on large objects (area > 96² px)",
    "mar_1": "recall with 1 detection per image",
    "mar_10": "recall with 10 detections per image",
    "mar_100": "recall with 100 detections per image",
    "num_images": "images evaluated",
    "num_detections": "detections evaluated",
}
STRUCTURED_METRICS = {"per_class", "pr_curves", "subset"}


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------- data

@register_section(20, title="Data summary", needs=("data_summary.json",))
def data_section(run: RunDir) -> Section | None:
    data = read_json(run, "data_summary.json")
    if not isinstance(data, dict):
        return None
    splits = {str(k): _as_dict(v) for k, v in _as_dict(data.get("splits")).items()}
    blocks: list[Any] = []
    if splits:
        rows = []
        for name, s in splits.items():
            images, boxes = finite(s.get("images")), finite(s.get("boxes"))
            per_image = boxes / images if images and boxes is not None else None
            problems = sum(_problem_count(v) for v in _as_dict(s.get("problems")).values())
            rows.append([name, s.get("images"), s.get("boxes"), per_image, problems])
        blocks.append(Table(["split", "images", "boxes", "boxes per image", "problems"], rows))

    names = [str(c.get("name", c.get("id"))) if isinstance(c, dict) else str(c) for c in data.get("categories") or []]
    per_class = {split: {str(k): v for k, v in _as_dict(s.get("per_class")).items()} for split, s in splits.items()}
    names += [n for counts in per_class.values() for n in counts if n not in names]
    empty = [str(c.get("name", c)) if isinstance(c, dict) else str(c) for c in data.get("empty_categories") or []]
    if names:
        rows = [[n] + [per_class[s].get(n, 0) for s in splits] + ["no annotations" if n in empty else ""] for n in names]
        blocks.append(Table(["class"] + list(splits) + ["note"], rows, caption="Boxes per class and split"))
    if empty:
        blocks.append(Paragraph(
            f"{count(len(empty), 'category', 'categories')} without annotations: {', '.join(empty)}. If the exporter wrote a supercategory "
            "as a category (Roboflow does), it takes a label without ever being trained.", "warning"))
    if len(names) > 1 and any(per_class.values()):
        blocks.append(Figure("class_counts", plots.horizontal_bars(
            {s: {n: float(c) for n, c in counts.items()} for s, counts in per_class.items() if counts},
            "Boxes per class", "boxes")))

    sizes = {split: _sizes(s.get("box_sizes")) for split, s in splits.items()}
    sizes = {k: v for k, v in sizes.items() if v is not None}
    if sizes:
        blocks.append(Figure("box_sizes", plots.size_histogram(sizes, "Ground-truth box sizes"),
                             caption="√(width·height) per box, log scale; dotted lines at COCO's 32 px and 96 px."))

    problem_kinds = list(dict.fromkeys(k for s in splits.values() for k in _as_dict(s.get("problems"))))
    if problem_kinds:
        rows = [[k] + [_problem_count(_as_dict(s.get("problems")).get(k)) for s in splits.values()] for k in problem_kinds]
        blocks.append(Table(["problem"] + list(splits), rows, caption="Problems found while reading (repaired or refused)"))
    return Section("Data summary", blocks) if blocks else None


def _problem_count(value: Any) -> int:
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    f = finite(value)
    return int(f) if f is not None else 0


def _sizes(value: Any) -> Any:
    """[[w, h], ...] -> sqrt areas; a list of numbers as is; {"bins", "counts"} passed through."""
    if isinstance(value, dict):
        return value if "bins" in value and "counts" in value else None
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, (list, tuple)) and len(v) >= 2 for v in value):
        wh = np.asarray([v[:2] for v in value], float)
        return np.sqrt(np.clip(wh[:, 0], 0, None) * np.clip(wh[:, 1], 0, None))
    return np.asarray([v for v in value if finite(v) is not None], float)


# ---------------------------------------------------------------- metrics

def _metrics(run: RunDir) -> dict[str, Any]:
    return _as_dict(read_json(run, "metrics.json"))


@register_section(40, title="Metrics", needs=("metrics.json",), tasks=("detection",))
def metrics_section(run: RunDir) -> Section | None:
    metrics = _metrics(run)
    if "map" not in metrics and "map50" not in metrics:
        return None  # not a detection run; the task's own module shows its metrics
    rows = [[k, metrics[k], desc] for k, desc in METRICS.items() if k in metrics]
    rows += [[k, v, ""] for k, v in metrics.items()
             if k not in METRICS and k not in STRUCTURED_METRICS and not isinstance(v, (dict, list))]
    return Section("Metrics", [Table(["metric", "value", "meaning"], rows,
                                     caption="COCO metrics (faster-coco-eval); n/a = not defined (no ground truth of that kind).")])


@register_section(45, title="Per-class AP", needs=("metrics.json",), tasks=("detection",))
def per_class_section(run: RunDir) -> Section | None:
    per_class = _as_dict(_metrics(run).get("per_class"))
    if not any("ap" in _as_dict(v) or "ap50" in _as_dict(v) for v in per_class.values()):
        return None  # none, or another task's per-class metrics (e.g. IoU)
    ap = {str(k): finite(_as_dict(v).get("ap")) for k, v in per_class.items()}
    ap50 = {str(k): finite(_as_dict(v).get("ap50")) for k, v in per_class.items()}
    fig = plots.horizontal_bars({"AP@[.5:.95]": ap, "AP50": ap50}, "Average precision per class", "AP", xlim=(0, 1))
    rows = [[k, ap[k], ap50[k]] for k in sorted(ap, key=lambda k: -1 if ap[k] is None else ap[k])]
    blocks: list[Any] = [Figure("per_class_ap", fig, caption="Worst classes at the top."),
                         Table(["class", "AP@[.5:.95]", "AP50"], rows)]
    undefined = [k for k in ap if ap[k] is None]
    if undefined:
        blocks.append(Paragraph(f"AP not defined for {', '.join(undefined)}: no ground truth of that class in the "
                                "evaluated split.", "note"))
    return Section("Per-class AP", blocks)


MAX_CONFUSION_CLASSES = 40


@register_section(47, title="Detection confusion matrix", needs=("detection_confusion.json",), optional=True,
                  tasks=("detection",))
def detection_confusion_section(run: RunDir) -> Section | None:
    data = read_confusion(run)
    if not isinstance(data, dict) or not isinstance(data.get("matrix"), list) or not data["matrix"]:
        return None  # not a detection run (no gt.json / predictions.json either)
    m = np.asarray(data["matrix"], np.int64)
    names = [str(n) for n in data.get("classes") or []]
    if m.ndim != 2 or m.shape[0] != m.shape[1] or len(names) != len(m):
        raise ValueError(f"detection_confusion.json: matrix of shape {m.shape} for {len(names)} class names")
    keep = plots.confusion_classes(m, MAX_CONFUSION_CLASSES, background=True)
    threshold, iou = finite(data.get("score_threshold")), finite(data.get("iou_threshold"))
    at = f"\nscore ≥ {threshold:g}, IoU ≥ {iou if iou is not None else 0.5:g}" if threshold is not None else ""
    shown = [names[k] for k in keep]
    blocks: list[Any] = [Figure("detection_confusion", plots.confusion_matrix(
        m[np.ix_(keep, keep)], shown, shown, f"Detection confusion matrix{at}",
        blank=[(len(keep) - 1, len(keep) - 1)]), caption=(
        "Rows: ground-truth class; columns: predicted class; colour = share of the row, number = boxes. "
        "The background row counts predictions that match no ground-truth box (nothing there, a duplicate, or a "
        "box too far off); the background column counts ground-truth boxes that no prediction found. A wrong-class "
        "prediction lands off the diagonal in the row of the box it sits on (IoU ≥ 0.5)."))]
    bg = len(m) - 1
    total_gt, found = m[:bg].sum(), np.trace(m[:bg, :bg])
    if total_gt:
        blocks.append(Paragraph(
            f"{found} of {total_gt} ground-truth boxes found with the right class, {m[:bg, :bg].sum() - found} with a "
            f"wrong class, {m[:bg, bg].sum()} not found; {m[bg, :bg].sum()} predictions on no ground-truth box."))
    if len(keep) < len(m):
        blocks.append(Paragraph(f"{len(keep) - 1} of {bg} classes drawn: those with any box, at most "
                                f"{MAX_CONFUSION_CLASSES} (the most boxes first).", "note"))
    return Section("Detection confusion matrix", blocks)


@register_section(50, title="Precision-recall curves", needs=("pr_curves.json",), tasks=("detection",))
def pr_section(run: RunDir) -> Section | None:
    data = _metrics(run).get("pr_curves")
    if data is None:
        data = read_json(run, "pr_curves.json")
    data = _as_dict(data)
    iou = data.get("iou")
    data = _as_dict(data.get("curves", data))
    per_class = _as_dict(_metrics(run).get("per_class"))
    curves = {}
    for name, c in data.items():
        c = _as_dict(c)
        r, p = c.get("recall"), c.get("precision")
        if isinstance(r, list) and isinstance(p, list) and len(r) == len(p) and r:
            ap50 = finite(c.get("ap50", _as_dict(per_class.get(name)).get("ap50")))
            label = f"{name} (AP50 {ap50:.2f})" if ap50 is not None else str(name)
            curves[label] = ([float(x) for x in r], [max(0.0, float(x)) for x in p])  # COCO writes -1 for "no data"
    if not curves:
        return None
    at = f" at IoU {iou:g}" if finite(iou) is not None else ""
    return Section("Precision-recall curves", [Figure("pr_curves", plots.pr_curves(curves, f"Precision-recall per class{at}"))])


# ---------------------------------------------------------------- detection statistics

@register_section(60, title="Detection statistics", needs=("detection_stats.json",), tasks=("detection",))
def detection_stats_section(run: RunDir) -> Section | None:
    stats = _as_dict(read_json(run, "detection_stats.json"))
    if not stats:
        return None
    threshold = display_threshold(run, stats)
    blocks: list[Any] = []
    hist = _as_dict(stats.get("score_histogram"))
    bins, counts = hist.get("bins") or [], hist.get("counts") or []
    if counts and len(bins) == len(counts):  # bin centres: make edges
        step = (bins[1] - bins[0]) if len(bins) > 1 else 0.05
        bins = [b - step / 2 for b in bins] + [bins[-1] + step / 2]
    if finite(stats.get("num_detections")) == 0:
        blocks.append(Paragraph("The model made no detections at all on the evaluated images, at any score.", "warning"))
    elif counts and len(bins) == len(counts) + 1:
        blocks.append(Figure("score_hist", plots.score_histogram(bins, counts, threshold, "Detection scores"),
                             caption="All detections kept for the metric; the dashed line is the display threshold."))
    per_image = {}
    rows = []
    keys = list(dict.fromkeys(k for v in _as_dict(stats.get("per_image")).values() for k in _as_dict(v)))
    for th, v in _as_dict(stats.get("per_image")).items():
        t = finite(_float(th))
        if t is None:
            continue
        v = _as_dict(v) if isinstance(v, dict) else {"mean": v}
        rows.append([t] + [v.get(k) for k in keys or ["mean"]])
        if finite(v.get("mean")) is not None:
            per_image[t] = float(v["mean"])
    if rows:
        rows.sort(key=lambda r: r[0])
        blocks.append(Table(["score ≥"] + [f"{k} per image" for k in keys or ["mean"]], rows,
                            caption="Detections per image at each score threshold"))
    if per_image:
        blocks.append(Figure("detections_per_image", plots.detections_per_threshold(
            per_image, threshold, "Detections per image by score threshold")))
    share = finite(stats.get("outside_image_share"))
    if share is not None:
        blocks.append(Paragraph(f"{share:.1%} of predicted boxes extend partly outside the image.",
                                "warning" if share > 0.1 else "text"))
    extra = [(k, v) for k, v in flatten(stats) if not k.startswith(("score_histogram", "per_image"))
             and k not in ("outside_image_share", "display_threshold") and not isinstance(v, list)]
    if extra:
        blocks.append(Table(["statistic", "value"], extra))
    return Section("Detection statistics", blocks) if blocks else None


def _float(s: Any) -> Any:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None
