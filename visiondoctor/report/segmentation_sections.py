"""Report sections of segmentation runs: whole-split metrics with per-class IoU bars, the
pixel confusion matrix, the worst images (image, ground truth, prediction, wrong pixels), and
anomaly segmentation (one table for every method and both aggregations, ROC and PR curves,
a qualitative grid: image, ground truth, prediction, one anomaly map per method).

Inputs (run directory): metrics.json with "miou" and "confusion_matrix" (see
evaluation/segmentation.py), segmentation_worst.npz / .json (evaluation/segmentation_worst.py),
categories.json (class names), anomaly.json and anomaly_examples.npz (written by
tasks/anomaly.py run_anomaly).
"""
from __future__ import annotations

import zipfile
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps

from visiondoctor.report import plots
from visiondoctor.evaluation.segmentation_worst import JSON_FILE as WORST_JSON
from visiondoctor.evaluation.segmentation_worst import NPZ_FILE as WORST_NPZ
from visiondoctor.report.inputs import finite, read_json
from visiondoctor.report.sections import Figure, Paragraph, Section, Table, register_section
from visiondoctor.rundir import RunDir

METHOD_NAMES = {"msp": "MSP", "maxlogit": "MaxLogit", "energy": "Energy", "sml": "SML"}
MAX_CONFUSION_CLASSES = 40
MAX_LEGEND_CLASSES = 20
WRONG = np.array([230, 25, 25], np.uint8)  # wrong pixels in the error map


def _pct(x: Any) -> str:
    v = finite(x)
    return "n/a" if v is None else f"{100 * v:.2f}"


def _pm(d: Any) -> str:
    if not isinstance(d, dict) or finite(d.get("mean")) is None:
        return "n/a"
    return f"{100 * d['mean']:.2f} ± {100 * (finite(d.get('std')) or 0):.2f}"


def segmentation_metric_blocks(metrics: dict[str, Any], what: str) -> list[Any]:
    """Pooled metrics first, the per-image distribution beside them, then per-class IoU bars."""
    blocks: list[Any] = []
    per = metrics.get("per_image_miou") or {}
    rows = [
        ("mIoU (pooled over the split)", _pct(metrics.get("miou"))),
        ("pixel accuracy", _pct(metrics.get("pixel_accuracy"))),
        ("mean class accuracy", _pct(metrics.get("mean_class_accuracy"))),
        ("per-image mIoU, mean ± std", _pm(per)),
        ("per-image mIoU, min … max", f"{_pct(per.get('min'))} … {_pct(per.get('max'))}"),
        ("images evaluated / in the split", f"{metrics.get('num_images', 'n/a')} / {metrics.get('total_images', 'n/a')}"),
        ("pixels evaluated / ignored / excluded (anomaly)",
         f"{metrics.get('evaluated_pixels', 'n/a')} / {metrics.get('ignored_pixels', 'n/a')} / "
         f"{metrics.get('excluded_pixels', 'n/a')}"),
    ]
    blocks.append(Table(["", "value [%]"], rows, caption=f"{what}: the mIoU is pooled (intersections and unions "
                        "summed over every evaluated pixel); the per-image mean is a different, noisier figure shown beside it"))
    subset = metrics.get("subset")
    if isinstance(subset, dict):
        blocks.append(Paragraph(
            f"Only {subset.get('evaluated_images')} of {subset.get('total_images')} images were evaluated: "
            "a sample estimate, not the split's figure.", "warning"))
    per_class = metrics.get("per_class") or {}
    ious = {name: (v or {}).get("iou") for name, v in per_class.items()}
    if ious:
        blocks.append(Figure("per_class_iou", plots.horizontal_bars({"IoU": ious}, f"Per-class IoU — {what}",
                                                                     "IoU", xlim=(0, 1))))
    return blocks


@register_section(41, title="Segmentation metrics", needs=("metrics.json",), optional=True, tasks=("segmentation",))
def segmentation_section(run: RunDir) -> Section | None:
    metrics = read_json(run, "metrics.json")
    if not isinstance(metrics, dict) or "miou" not in metrics:
        return None
    return Section("Segmentation metrics", segmentation_metric_blocks(metrics, f"{metrics.get('split', 'val')} split"))


def class_names(run: RunDir, metrics: dict[str, Any], k: int) -> list[str]:
    """Names of labels 0..k-1: categories.json's, else metrics.json per_class keys, else the numbers."""
    cats = read_json(run, "categories.json")
    names = cats.get("names") if isinstance(cats, dict) else None
    if isinstance(names, list) and len(names) == k:
        return [str(n) for n in names]
    per_class = list((metrics.get("per_class") or {}).keys())
    return [str(n) for n in per_class] if len(per_class) == k else [str(i) for i in range(k)]


@register_section(42, title="Segmentation confusion matrix", needs=("metrics.json",), optional=True,
                  tasks=("segmentation",))
def segmentation_confusion_section(run: RunDir) -> Section | None:
    metrics = read_json(run, "metrics.json")
    if not isinstance(metrics, dict) or "miou" not in metrics or not metrics.get("confusion_matrix"):
        return None
    m = np.asarray(metrics["confusion_matrix"], np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"metrics.json: confusion_matrix must be square, got shape {m.shape}")
    names = class_names(run, metrics, len(m))
    excluded = {int(x) for x in metrics.get("excluded_labels") or []}
    keep = [k for k in plots.confusion_classes(m, MAX_CONFUSION_CLASSES) if k not in excluded]
    if not keep:
        return None
    shown = [names[k] for k in keep]
    blocks: list[Any] = [Figure("segmentation_confusion", plots.confusion_matrix(
        m[np.ix_(keep, keep)], shown, shown, "Pixel confusion matrix", cell_text="share"), caption=(
        "Rows: ground-truth class; columns: predicted class; each row sums to 100% of that class's evaluated "
        "pixels (the numbers are %). Off-diagonal cells show which class the model mistakes it for; ignored "
        "pixels are not counted."))]
    if len(keep) < len(m) - len(excluded):
        blocks.append(Paragraph(f"{len(keep)} of {len(m) - len(excluded)} classes drawn: those with any pixel, "
                                f"at most {MAX_CONFUSION_CLASSES} (the most pixels first).", "note"))
    return Section("Segmentation confusion matrix", blocks)


def _load_worst(run: RunDir) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    summary = read_json(run, WORST_JSON)
    path = run.path / WORST_NPZ
    if not isinstance(summary, dict) or not summary.get("images") or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return summary, {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None


def error_map(gt: np.ndarray, pred: np.ndarray, image: np.ndarray | None, ignore_index: int,
              excluded: Sequence[int] = ()) -> np.ndarray:
    """RGB: wrong pixels red over the dimmed image (grey without one); ignored or excluded pixels black."""
    valid = (gt != ignore_index) & ~np.isin(gt, list(excluded))
    base = image.mean(-1, keepdims=True) * 0.45 if image is not None else np.full(gt.shape + (1,), 90.0)
    out = np.repeat(base, 3, -1).astype(np.uint8)
    out[valid & (gt != pred)] = WRONG
    out[~valid] = 0
    return out


@register_section(71, title="Worst segmented images", needs=(WORST_JSON, WORST_NPZ), optional=True,
                  tasks=("segmentation",))
def segmentation_worst_section(run: RunDir) -> Section | None:
    loaded = _load_worst(run)
    if loaded is None:
        return None
    summary, arrays = loaded
    metrics = read_json(run, "metrics.json")
    ignore = int(summary.get("ignore_index", 255))
    labels = [a for key, a in arrays.items() if key.startswith(("gt_", "pred_"))]
    present = sorted({int(v) for a in labels for v in np.unique(a) if v >= 0 and v != ignore})
    names = [str(n) for n in summary.get("class_names") or []]
    k = max(len(names), present[-1] + 1 if present else 1)
    if not names:
        names = class_names(run, metrics if isinstance(metrics, dict) else {}, k)
    excluded = [int(x) for x in summary.get("excluded_labels") or []]
    rows, titles, table = [], [], []
    for j, entry in enumerate(summary["images"]):
        gt, pred = arrays.get(f"gt_{j}"), arrays.get(f"pred_{j}")
        if gt is None or pred is None or gt.shape != pred.shape:
            raise ValueError(f"{run.path / WORST_NPZ}: gt_{j} / pred_{j} missing or of different shapes")
        image = arrays.get(f"image_{j}")
        gt_i, pred_i = gt.astype(np.int64), pred.astype(np.int64)
        rows.append([image, _colour(gt_i, k), _colour(pred_i, k), error_map(gt_i, pred_i, image, ignore, excluded)])
        miou = finite(entry.get("miou"))
        titles.append(f"#{j + 1} mIoU {100 * miou:.1f}%" if miou is not None else f"#{j + 1}")
        table.append([j + 1, entry.get("file_name", ""), entry.get("index"), _pct(entry.get("miou")),
                      f"{entry.get('width', '?')} × {entry.get('height', '?')}"])
    legend = {names[c] if c < len(names) else str(c): tuple(_colour(np.array([[c]]), k)[0, 0] / 255)
              for c in present[:MAX_LEGEND_CLASSES]}
    evaluated = summary.get("images_evaluated")
    return Section("Worst segmented images", [
        Figure("segmentation_worst", plots.image_rows(
            rows, ["image", "ground truth", "prediction", "wrong pixels"], titles,
            "Lowest per-image mIoU first", legend=legend), caption=(
            f"The {len(rows)} images with the lowest per-image mIoU"
            + (f" of {evaluated} evaluated" if evaluated is not None else "")
            + ", worst first (thumbnails). Wrong pixels: red; ignored pixels: black; others: the dimmed image. "
              "Per-image mIoU averages the classes present in that image's ground truth or prediction.")),
        Table(["rank", "file", "index", "mIoU [%]", "size (w × h)"], table),
    ])


def _curves_png(methods: dict[str, Any], order: Sequence[str]) -> bytes | None:
    fig = plots.new_figure(10.0, 4.0)
    roc, pr = fig.subplots(1, 2)
    drawn = False
    for i, m in enumerate(order):
        c = (methods.get(m) or {}).get("curves") or {}
        if not c.get("fpr"):
            continue
        pooled = methods[m].get("pooled", {})
        label = METHOD_NAMES.get(m, m)
        roc.plot(c["fpr"], c["tpr"], color=f"C{i}", label=f"{label} (AUROC {_pct(pooled.get('auroc'))})")
        pr.plot(c["recall"], c["precision"], color=f"C{i}", label=f"{label} (AUPR {_pct(pooled.get('aupr'))})")
        drawn = True
    if not drawn:
        return None
    roc.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    roc.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC (pooled pixels)", xlim=(0, 1), ylim=(0, 1.01))
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall (pooled pixels)", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return plots.to_png(fig)


def _colour(labels: np.ndarray, n: int) -> np.ndarray:
    cmap = colormaps["tab20"]
    table = (np.array([cmap(i % 20)[:3] for i in range(max(n, 1))]) * 255).astype(np.uint8)
    out = np.zeros(labels.shape + (3,), np.uint8)
    valid = (labels >= 0) & (labels < n)
    out[valid] = table[labels[valid]]
    return out  # ignored pixels stay black


def _grid_png(examples: dict[str, np.ndarray], class_names: list[str], anomaly_labels: list[int]) -> bytes:
    methods = [str(m) for m in examples["methods"]]
    cols = 3 + len(methods)
    n = len(examples["gt"])
    fig = plots.new_figure(1.9 * cols, 1.9 * n + 0.4)
    axes = fig.subplots(n, cols, squeeze=False)
    titles = ["image", "ground truth", "prediction"] + [f"{METHOD_NAMES.get(m, m)} score" for m in methods]
    k = len(class_names)
    for r in range(n):
        gt = examples["gt"][r].astype(np.int64)
        panels = [examples["image"][r], _colour(gt, k), _colour(examples["pred"][r].astype(np.int64), k)]
        for c, panel in enumerate(panels):
            axes[r][c].imshow(panel, interpolation="nearest")
        outline = np.isin(gt, anomaly_labels)
        for j, m in enumerate(methods):
            ax = axes[r][3 + j]
            score = examples[f"score_{m}"][r].astype(np.float32)
            lo, hi = np.percentile(score, [1, 99.5])  # per-image contrast; ranks are what matter
            ax.imshow(score, cmap="magma", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            if outline.any():
                ax.contour(outline, levels=[0.5], colors="cyan", linewidths=0.6)
        for c in range(cols):
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(titles[c], fontsize=8)
    fig.suptitle("Anomaly maps (brighter = more anomalous; cyan outline = ground-truth anomaly)", fontsize=9)
    return plots.to_png(fig, palette=True)


def _load_examples(run: RunDir) -> dict[str, np.ndarray] | None:
    path = run.path / "anomaly_examples.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@register_section(56, title="Anomaly segmentation", needs=("anomaly.json",), optional=True, tasks=("segmentation",))
def anomaly_section(run: RunDir) -> Section | None:
    result = read_json(run, "anomaly.json")
    if not isinstance(result, dict) or not result.get("methods"):
        return None
    methods: dict[str, Any] = result["methods"]
    order = [m for m in result.get("methods_order", list(methods)) if m in methods]
    rows = []
    for m in order:
        pooled, per = methods[m].get("pooled", {}), methods[m].get("per_image", {})
        rows.append([METHOD_NAMES.get(m, m), _pct(pooled.get("auroc")), _pct(pooled.get("aupr")), _pct(pooled.get("fpr95")),
                     _pm(per.get("auroc")), _pm(per.get("aupr")), _pm(per.get("fpr95")), per.get("images_used", "n/a")])
    blocks: list[Any] = [
        Paragraph(f"Split {result.get('split', '?')} ({result.get('images', '?')} images, "
                  f"{result.get('images_without_anomaly', 0)} without anomaly pixels); anomaly class(es): "
                  f"{', '.join(result.get('anomaly_classes', []))}."),
        Table(["method", "AUROC pooled", "AUPR pooled", "FPR95 pooled", "AUROC per image", "AUPR per image",
               "FPR95 per image", "images (per image)"], rows,
              caption="All figures in %. Pooled: every pixel of the split ranked together (SML protocol). "
                      "Per image: mean ± std over images holding anomaly pixels (hendrycks/anomaly-seg). "
                      "Higher AUROC/AUPR and lower FPR95 are better."),
        Paragraph(f"Convention: {result.get('convention', 'n/a')}", "note"),
    ]
    if isinstance(result.get("subset"), dict):
        s = result["subset"]
        blocks.append(Paragraph(f"Only {s.get('evaluated_images')} of {s.get('total_images')} images were scored.", "warning"))
    curves = _curves_png(methods, order)
    if curves:
        blocks.append(Figure("anomaly_curves", curves, "ROC and precision-recall curves of each method"))
    examples = _load_examples(run)
    if examples and len(examples.get("gt", [])):
        blocks.append(Figure("anomaly_examples", _grid_png(examples, result.get("class_names", []),
                                                           result.get("anomaly_labels", []))))
    seg = result.get("segmentation")
    if isinstance(seg, dict) and "miou" in seg:
        blocks += segmentation_metric_blocks(seg, f"{result.get('split', 'test')} split, anomaly pixels excluded")
        for block in blocks:
            if isinstance(block, Figure) and block.name == "per_class_iou":
                block.name = "per_class_iou_anomaly_split"
    return Section("Anomaly segmentation", blocks)
