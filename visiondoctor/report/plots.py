"""The report's plots, as PNG bytes, from plain numbers (no file formats here).

matplotlib's object API with the Agg canvas: no pyplot state, safe to call from any
thread or process, no display needed. Every plot has a title, axis labels and units.
Strings from the data (class names) go through `plain()` so a `$` in a class name is
shown as is instead of being parsed as mathtext.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from PIL import Image

DPI = 100
COCO_SMALL, COCO_MEDIUM = 32.0, 96.0  # sqrt(area) limits of COCO's small / medium objects
MAX_LABEL_CHARS = 28


def shorten(text: Any, limit: int = MAX_LABEL_CHARS) -> str:
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def plain(text: Any, limit: int = MAX_LABEL_CHARS) -> str:
    """Data text for a plot: shortened, and `$` escaped so matplotlib does not parse mathtext."""
    return shorten(text, limit).replace("$", r"\$")


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure, palette: bool = False) -> bytes:
    """PNG bytes. `palette` quantises to 256 colours: photo grids shrink about 3x and stay legible."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    if not palette:
        return buf.getvalue()

    buf.seek(0)
    with Image.open(buf) as img:
        out = io.BytesIO()
        img.convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _grid(n: int, cols: int, panel_w: float, panel_h: float, **kw: Any) -> tuple[Figure, list]:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = new_figure(panel_w * cols, panel_h * rows)
    axes = fig.subplots(rows, cols, squeeze=False, **kw).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


# ---------------------------------------------------------------- curves

@dataclass
class Series:
    """One line of a curve panel. Same `color` index = same colour; `dashed` for validation."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: int = 0
    dashed: bool = False
    markers: bool = False
    smooth: bool = False  # noisy per-step values: draw faintly, with a moving average on top


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    head = np.cumsum(y[: window - 1]) / np.arange(1, window)  # partial windows at the start
    return np.concatenate([head, np.convolve(y, kernel, mode="valid")])


def curve_panels(
    panels: Mapping[str, Sequence[Series]],
    title: str,
    xlabel: str,
    ylabel: str | Mapping[str, str] = "loss",
    log_y: bool = False,
    cols: int = 3,
) -> bytes:
    """Small multiples: one axes per panel (e.g. per loss component), series overlaid on it.

    `ylabel` is one label for all panels or one per panel name."""
    fig, axes = _grid(len(panels), cols, 3.8, 2.8)  # not sharex: a hidden spare axes would hide tick labels
    colors = [f"C{i}" for i in range(10)]
    for ax, (name, series) in zip(axes, panels.items()):
        for s in series:
            x, y = np.asarray(s.x, float), np.asarray(s.y, float)
            ok = np.isfinite(x) & np.isfinite(y)
            x, y = x[ok], y[ok]
            if not len(x):
                continue
            color, style = colors[s.color % 10], "--" if s.dashed else "-"
            if s.smooth and len(y) > 60:
                ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
                y = _moving_average(y, max(2, len(y) // 30))
            ax.plot(x, y, style, color=color, label=plain(s.label, 40), linewidth=1.5,
                    marker="o" if s.markers else None, markersize=3)
        ax.set_title(plain(name, 40), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(plain(ylabel if isinstance(ylabel, str) else ylabel.get(name, ""), 40))
        if log_y and _all_positive(ax):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize=8)
    xs = [x for ax in axes for line in ax.get_lines() for x in np.asarray(line.get_xdata(), float)]
    if xs and min(xs) < max(xs):
        for ax in axes:  # the same x range everywhere, so panels line up
            ax.set_xlim(min(xs), max(xs))
    fig.suptitle(title)
    return to_png(fig)


def _all_positive(ax: Any) -> bool:
    ys = [np.asarray(line.get_ydata(), float) for line in ax.get_lines()]
    return bool(ys) and all(len(y) == 0 or np.nanmin(y) > 0 for y in ys)


# ---------------------------------------------------------------- data

def size_histogram(sizes_by_split: Mapping[str, Any], title: str = "Box sizes") -> bytes:
    """Histogram of sqrt(box area) in pixels on a log axis, one outline per split.

    Each value is either a sequence of sizes or a pre-binned {"bins": edges, "counts": counts}.
    COCO's small/medium/large limits (32 and 96 px) are drawn in.
    """
    fig = new_figure(6.5, 3.4)
    ax = fig.add_subplot()
    drawn = False
    raw = [np.asarray(v, float) for v in sizes_by_split.values() if not isinstance(v, Mapping)]
    positive = [v[v > 0] for v in raw]
    positive = [v for v in positive if len(v)]
    edges = None
    if positive:  # shared log-spaced bins so the splits are comparable
        lo = max(0.5, min(v.min() for v in positive))
        hi = max(v.max() for v in positive)
        edges = np.geomspace(lo, max(hi, lo * 1.01), 30)
    for i, (split, value) in enumerate(sizes_by_split.items()):
        if isinstance(value, Mapping):
            bins, counts = np.asarray(value.get("bins", []), float), np.asarray(value.get("counts", []), float)
            if len(bins) != len(counts) + 1 or not len(counts):
                continue
            ax.stairs(counts, bins, label=plain(split), color=f"C{i}", linewidth=1.5)
        else:
            v = np.asarray(value, float)
            v = v[v > 0]
            if not len(v):
                continue
            ax.hist(v, bins=edges, histtype="step", linewidth=1.5, label=f"{plain(split)} ({len(v)} boxes)",
                    color=f"C{i}")
        drawn = True
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    lo, hi = min(lo, COCO_SMALL / 2), max(hi, COCO_MEDIUM * 2)
    ax.set_xlim(lo, hi)
    ticks = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if lo <= t <= hi]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    for limit, name in ((COCO_SMALL, "small | medium"), (COCO_MEDIUM, "medium | large")):
        ax.axvline(limit, color="grey", linestyle=":", linewidth=1)
        ax.text(limit, 0.98, name, transform=ax.get_xaxis_transform(), fontsize=7, va="top", ha="center",
                color="grey", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_xlabel("box size √(w·h) [px, log scale]")
    ax.set_ylabel("boxes")
    ax.set_title(title)
    if drawn:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return to_png(fig)


def horizontal_bars(
    groups: Mapping[str, Mapping[str, float | None]],
    title: str,
    xlabel: str,
    xlim: tuple[float, float] | None = None,
    max_items: int = 40,
) -> bytes:
    """Grouped horizontal bars: one row per item (class), one bar per group (ap, ap50, or a model).

    Items are ordered by the first group's value, lowest at the top so the worst stand out;
    missing values (None/NaN) are drawn as an empty slot marked "n/a".
    """
    names = list(dict.fromkeys(k for g in groups.values() for k in g))
    first = next(iter(groups.values()), {})
    names.sort(key=lambda n: _sort_value(first.get(n)))
    names = names[:max_items]
    n_groups = max(1, len(groups))
    height = 0.8 / n_groups
    fig = new_figure(7.0, 0.9 + 0.22 * len(names) * max(1.0, n_groups * 0.6))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    for gi, (group, values) in enumerate(groups.items()):
        vals = [_finite_or_nan(values.get(n)) for n in names]
        pos = y - 0.4 + height * (gi + 0.5)
        ax.barh(pos, np.nan_to_num(vals), height=height, label=plain(group, 40), color=f"C{gi}")
        for p, v in zip(pos, vals):
            if math.isnan(v):
                ax.text(0.0, p, " n/a", va="center", fontsize=7, color="grey")
    ax.set_yticks(y, [plain(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    if xlim:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if len(groups) > 1:
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return to_png(fig)


def _finite_or_nan(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def _sort_value(v: Any) -> float:
    f = _finite_or_nan(v)
    return -1.0 if math.isnan(f) else f


# ---------------------------------------------------------------- metrics

def pr_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str, max_lines: int = 10) -> bytes:
    """Precision against recall, one line per class; beyond `max_lines` classes, small multiples."""
    items = list(curves.items())
    if len(items) <= max_lines:
        fig = new_figure(5.5, 4.2)
        axes = [fig.add_subplot()] * len(items)
    else:
        fig, axes = _grid(len(items), 4, 2.6, 2.3, sharex=True, sharey=True)
    for i, (ax, (name, (recall, precision))) in enumerate(zip(axes, items)):
        ax.plot(recall, precision, color=f"C{i % 10}", linewidth=1.5, label=plain(name, 44))
        if len(items) > max_lines:
            ax.set_title(plain(name), fontsize=8)
    for ax in set(axes) if len(items) <= max_lines else axes:
        ax.set_xlim(0, 1.0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
        if len(items) <= max_lines:
            ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(title)
    return to_png(fig)


def score_histogram(edges: Sequence[float], counts: Sequence[float], threshold: float | None, title: str) -> bytes:
    """Detection scores with the display threshold drawn in (how many detections it keeps)."""
    edges_a, counts_a = np.asarray(edges, float), np.asarray(counts, float)
    fig = new_figure(6.5, 3.4)
    ax = fig.add_subplot()
    ax.stairs(counts_a, edges_a, fill=True, alpha=0.6, color="C0", label="detections")
    if threshold is not None:
        kept = counts_a[edges_a[:-1] >= threshold].sum()
        share = kept / counts_a.sum() if counts_a.sum() else 0.0
        ax.axvline(threshold, color="C3", linestyle="--", linewidth=1.5,
                   label=f"display threshold {threshold:g} (keeps {share:.1%})")
    if counts_a.max(initial=0) > 0 and counts_a.max() / max(counts_a[counts_a > 0].min(), 1) > 100:
        ax.set_yscale("log")
    ax.set_xlim(min(0.0, edges_a.min()), max(1.0, edges_a.max()))
    ax.set_xlabel("detection score")
    ax.set_ylabel("detections")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return to_png(fig)


def detections_per_threshold(per_threshold: Mapping[float, float], display_threshold: float | None, title: str) -> bytes:
    """Mean detections per image at each score threshold, as bars."""
    ths = sorted(per_threshold)
    fig = new_figure(5.0, 3.2)
    ax = fig.add_subplot()
    labels = [f"≥ {t:g}" for t in ths]
    colors = ["C3" if display_threshold is not None and math.isclose(t, display_threshold) else "C0" for t in ths]
    bars = ax.bar(labels, [per_threshold[t] for t in ths], color=colors)
    ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_xlabel("score threshold (red: display threshold)" if "C3" in colors else "score threshold")
    ax.set_ylabel("detections per image (mean)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)


def value_bars(values: Mapping[str, float], title: str, ylabel: str) -> bytes:
    """Plain vertical bars for a flat name -> number mapping (e.g. TIDE's ΔAP per error type)."""
    fig = new_figure(5.5, 3.2)
    ax = fig.add_subplot()
    names = list(values)
    bars = ax.bar([plain(n, 16) for n in names], [values[n] for n in names], color=[f"C{i % 10}" for i in range(len(names))])
    ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)


def scatter(
    x: Sequence[float],
    y: Sequence[float],
    title: str,
    xlabel: str,
    ylabel: str,
    line: tuple[Sequence[float], Sequence[float]] | None = None,
    high_score_low_iou: tuple[float, float] | None = None,
) -> bytes:
    """Score (x) against IoU (y), with the binned mean drawn over it and the
    high-score/low-IoU corner (x >= first, y < second) shaded."""
    fig = new_figure(5.2, 4.0)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=6, alpha=0.35, color="C0", label=f"detections (n={len(x)})")
    if line is not None:
        ax.plot(line[0], line[1], "-o", color="C1", markersize=3, linewidth=1.8, label="mean IoU per score bin")
    if high_score_low_iou is not None:
        sx, iy = high_score_low_iou
        ax.axvspan(sx, 1.0, ymin=0, ymax=iy / 1.02, color="C3", alpha=0.12,
                   label=f"score ≥ {sx:g}, IoU < {iy:g}")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return to_png(fig)


# ---------------------------------------------------------------- pictures

@dataclass
class Tile:
    """One image with boxes (absolute xyxy pixels) and their captions."""

    title: str
    image: np.ndarray | None  # HxWx3 uint8, or None when the file could not be read
    width: float
    height: float
    boxes: Sequence[tuple[float, float, float, float]]
    labels: Sequence[str]
    colors: Sequence[int | str]  # per box: a colour index (by class) or a matplotlib colour (by error type)
    styles: Sequence[str] = ()  # per box line style ("-" when absent), e.g. dashed for crowd boxes


def tile_grid(pairs: Sequence[tuple[Tile, Tile]], title: str, pairs_per_row: int = 2,
              legend: Mapping[str, str] | None = None) -> bytes:
    """Image pairs side by side (ground truth left, predictions right), boxes with captions;
    `legend` (label -> colour) is drawn under the grid."""
    n = len(pairs)
    rows = math.ceil(n / pairs_per_row)
    cols = 2 * min(pairs_per_row, n)
    fig = new_figure(3.0 * cols, 3.1 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for i, (left, right) in enumerate(pairs):
        for ax, tile in ((axes[2 * i], left), (axes[2 * i + 1], right)):
            _draw_tile(ax, tile)
    fig.suptitle(title)
    if legend:
        _legend(fig, legend, edge_only=True)
    return to_png(fig, palette=True)


def _legend(fig: Figure, entries: Mapping[str, Any], edge_only: bool = False) -> None:
    """A figure legend under the axes: one patch per label (outlined boxes or filled colours)."""
    handles = [Patch(facecolor="none" if edge_only else color, edgecolor=color, linewidth=2 if edge_only else 0.5,
                     label=plain(label, 40)) for label, color in entries.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)


def _color(c: int | str) -> str:
    return c if isinstance(c, str) else f"C{c % 10}"


def _draw_tile(ax: Any, tile: Tile) -> None:
    if tile.image is not None:
        ax.imshow(tile.image, extent=(0, tile.width, tile.height, 0), interpolation="bilinear")
    else:
        ax.add_patch(Rectangle((0, 0), tile.width, tile.height, color="0.85"))
        ax.text(tile.width / 2, tile.height / 2, "image file not found", ha="center", va="center", fontsize=8)
    ax.set_xlim(0, tile.width)
    ax.set_ylim(tile.height, 0)
    ax.set_aspect("equal")
    styles = list(tile.styles) or ["-"] * len(tile.boxes)
    for (x1, y1, x2, y2), label, c, style in zip(tile.boxes, tile.labels, tile.colors, styles):
        color = _color(c)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.2, linestyle=style))
        ax.text(x1, y1, plain(label, 24), fontsize=6, color="white", va="bottom",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 0.5, "alpha": 0.8}, clip_on=True)
    ax.set_title(plain(tile.title, 44), fontsize=8)


def image_rows(rows: Sequence[Sequence[np.ndarray | None]], column_titles: Sequence[str], row_titles: Sequence[str],
               title: str, legend: Mapping[str, Any] | None = None, panel: float = 2.1) -> bytes:
    """A grid of RGB panels (H x W x 3 uint8), one row per example, titled per column and per row;
    None draws an empty panel. `legend` (label -> colour) lists e.g. the class colours."""
    cols = max((len(r) for r in rows), default=1)
    fig = new_figure(panel * cols, panel * len(rows) + (0.6 if legend else 0.3))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            picture = row[c] if c < len(row) else None
            if picture is not None:
                ax.imshow(picture, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "not stored", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            if r == 0 and c < len(column_titles):
                ax.set_title(plain(column_titles[c], 30), fontsize=9)
        if r < len(row_titles):
            axes[r][0].set_ylabel(plain(row_titles[r], 30), fontsize=8)
    fig.suptitle(title, fontsize=10)
    if legend:
        _legend(fig, legend)
    return to_png(fig, palette=True)


def confusion_classes(m: np.ndarray, limit: int, background: bool = False) -> list[int]:
    """Indices of the classes of a square confusion matrix worth drawing: those with any count
    (as ground truth or prediction), at most `limit` of them (the most counts, kept in their
    order); with `background`, the last row/column is always kept too."""
    m = np.asarray(m)
    n = len(m) - 1 if background else len(m)
    volume = m.sum(0) + m.sum(1)
    used = [k for k in range(n) if volume[k] > 0] or list(range(n))
    used = sorted(sorted(used, key=lambda k: -volume[k])[:limit])
    return used + ([n] if background else [])


def confusion_matrix(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str,
                     cell_text: str = "count", xlabel: str = "predicted", ylabel: str = "ground truth",
                     blank: Sequence[tuple[int, int]] = (), max_annotated: int = 30) -> bytes:
    """A matrix coloured by row share (each row sums to 1; an empty row stays white), with the
    count (`cell_text` "count") or the row share in % ("share") written in every non-zero cell
    up to `max_annotated` rows and columns. `blank` cells are greyed out (undefined)."""
    m = np.asarray(matrix, np.float64)
    totals = m.sum(1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    shown = np.ma.masked_array(share, mask=np.zeros_like(share, bool))
    for r, c in blank:
        shown.mask[r, c] = True
    n_r, n_c = m.shape
    fig = new_figure(min(max(5.0, 2.4 + 0.42 * n_c), 18.0), min(max(3.6, 1.8 + 0.36 * n_r), 18.0))
    ax = fig.add_subplot()
    cmap = colormaps["Blues"].with_extremes(bad="0.85")
    image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="share of the row", shrink=0.8)
    if max(n_r, n_c) <= max_annotated:
        for r in range(n_r):
            for c in range(n_c):
                if m[r, c] == 0 or (r, c) in blank:
                    continue
                pct = 100 * share[r, c]
                text = f"{int(m[r, c])}" if cell_text == "count" else (f"{pct:.0f}" if pct >= 0.5 else "<1")
                ax.text(c, r, text, ha="center", va="center", fontsize=7,
                        color="white" if share[r, c] > 0.55 else "black")
    ax.set_xticks(range(n_c), [plain(n, 18) for n in columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_r), [plain(n, 18) for n in rows], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return to_png(fig)
