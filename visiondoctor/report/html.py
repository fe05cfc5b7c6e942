"""report.html from a run directory, and nothing else (no process state).

    build_report(run_dir) -> run_dir/report.html   (plots also saved as run_dir/plots/<name>.png)

The page is one self-contained file: CSS inline, images as base64 PNG data URIs, no
JavaScript, no external URL (a Content-Security-Policy forbids loading anything). It is
rendered by Jinja2 with autoescape on, so class names, file names and finding texts from
the data are escaped.

Sections
--------
Each section is a function `(run: RunDir) -> Section | None` registered with
`visiondoctor.report.sections.register_section(order, fn, title=..., needs=..., tasks=...)`;
a section registered for other tasks than the run's (config.yaml `task`) is left out: a
segmentation report has no detection placeholders, nor a detection report segmentation ones. None
means its inputs are missing and the page lists it under "Not in this report" with the
files it needs. A section that raises is shown with its error instead of stopping the
report. A feature adds its sections from its own `report_sections.py`, which registers them when
the feature package is imported (the CLI and the Python API import every feature); nothing here
needs an edit. See sections.py for the Section / Paragraph / Heading / Table / Figure / Html blocks.

Inputs the report reads (all in the run directory; every one optional but config.yaml)
---------------------------------------------------------------------------------------
config.yaml       the resolved Config. Read: name, task, model.name, model.image_size,
                  data.path, data.synth, eval.split, eval.max_images, eval.display_threshold.
history.csv       header `epoch,step,split,lr,loss,loss_<component>...[,images_per_s,grad_norm,...]`;
                  split is `train` (one row per logged step) or `val` (one row per
                  evaluation, `step` = global step at that moment). Empty cell = not measured.
                  Curves: x = step (epoch when no step), one panel per `loss`/`loss_*` column.
metrics.json      detection: {"map", "map50", "map75", "map_small", "map_medium", "map_large",
                  "mar_1", "mar_10", "mar_100", "num_images", "num_detections",
                  "per_class": {name: {"ap", "ap50"}}, optional "split": "val",
                  optional "subset": {"evaluated_images": n, "total_images": N} (shown as a
                  warning), optional "pr_curves" (as pr_curves.json)}. null/NaN = undefined.
pr_curves.json    {"iou": 0.5 (optional), "curves": {class: {"recall": [...], "precision": [...]}}}
                  or directly {class: {"recall", "precision"}}; precision -1 is drawn as 0.
detection_stats.json
                  {"score_histogram": {"bins": [edges, n+1] (or n centres), "counts": [n]},
                   "per_image": {"0.05": {"mean": x, "median": x, "max": x, ...}, "0.25": ..., "0.5": ...},
                   "outside_image_share": fraction of predicted boxes partly outside the image,
                   "display_threshold": optional (else config eval.display_threshold, else 0.5)}
                  The score histogram is saved as plots/score_hist.png, so a finding can refer to it.
data_summary.json {"splits": {split: {"images": n, "boxes": n, "per_class": {name: count},
                   "box_sizes": [[w, h], ...] | [sqrt_area, ...] | {"bins": edges, "counts": counts},
                   "problems": {kind: count | [messages]}, "source": annotation file (optional)}},
                   "categories": [name | {"id", "name"}], "empty_categories": [name | {"id", "name"}],
                   "root": dataset folder (optional)}
diagnosis.json    a list of findings (or {"findings": [...]}), each {"id", "severity":
                  error|warning|info, "title", "evidence": {name: number|text|list|dict},
                  "cause", "fix", "where"}. evidence["plot"] = "plots/<name>.png" (run-dir
                  relative) embeds that picture with the finding. Missing file -> "not run".
predictions.json  COCO results: [{"image_id", "category_id" (dataset id), "bbox": [x, y, w, h], "score"}].
gt.json           the evaluated split as a COCO dict ({"images", "annotations", "categories"}),
                  optionally "image_root": the folder the image file names are relative to
                  (absolute, or relative to the run dir); else the folder of the evaluated
                  split's "source" in data_summary.json, its "root", then config data.path.
                  Without gt.json, a data.path in config.yaml naming a COCO .json file is used.
categories.json   CategoryMap.to_dict(): {"dataset_ids", "names", "background"} (names of
                  predicted ids when gt.json has no categories).
errors.json       TIDE-style error split. Any dict works (every dict of numbers becomes a
                  table); a dict keyed by error types (cls, loc, both, dupe, bkg, miss) at the
                  top level or one level down is also drawn as bars, e.g.
                  {"dAP": {"cls": .., "loc": .., "both": .., "dupe": .., "bkg": .., "miss": ..},
                   "counts": {...}}.
consistency.json  score-IoU consistency. Any dict; scalars become a table, e.g.
                  {"spearman": rho, "n": count, "high_score_low_iou_share": x}; lists
                  {"score": [...], "iou": [...]} (top level or in one sub-dict) become a scatter plot,
                  with "mean_iou_by_score_bin": {"bins": edges, "mean_iou": [...]} drawn over it.
detection_confusion.json
                  evaluation/detection_quality.py detection_confusion(): {"classes": K names +
                  "background", "category_ids": [K ids], "matrix": (K+1) x (K+1) counts (rows = ground
                  truth, columns = prediction; last row = predictions matching no ground truth, last
                  column = ground truth found by no prediction), "score_threshold", "iou_threshold",
                  "num_images", "ignored_crowd", "beyond_max_dets"}. Absent: computed from gt.json +
                  predictions.json at the display threshold.
detection_per_image.json
                  evaluation/detection_quality.py per_image_quality(): {"score_threshold",
                  "iou_threshold", "background_threshold", "score", "types", "num_images",
                  "images_with_boxes", "images": worst first (lowest F1 at score_threshold), each
                  {"image_id", "file_name", "width", "height", "f1", "num_gt", "num_predictions",
                  "max_score", "counts": {true_positive, classification, localisation, both, duplicate,
                  background, missed: n}, "ignored_crowd", "beyond_max_dets"}; the first
                  images_with_boxes also "predictions": [{"bbox" xywh, "category_id", "score", "type"}]
                  and "ground_truth": [{"bbox", "category_id", "type": found | missed | classification |
                  localisation | crowd}]}. Absent: computed like detection_confusion.json. Drives the
                  worst-first gallery ("Predictions beside ground truth").
segmentation metrics.json
                  evaluation/segmentation.py's keys; "confusion_matrix" (K x K pixel counts, rows =
                  ground truth) is drawn row-normalised with categories.json "names" (else the keys of
                  "per_class"); "excluded_labels" are left out.
segmentation_worst.json + segmentation_worst.npz
                  evaluation/segmentation_worst.py write_worst_images(): JSON {"images": [{"rank",
                  "index", "file_name", "miou", "height", "width", "has_image"}] lowest mIoU first,
                  "class_names", "ignore_index", "excluded_labels", "images_evaluated", "k",
                  "thumbnail_size"}; npz (np.load(allow_pickle=False)) pred_<rank>, gt_<rank> (int16
                  label maps) and image_<rank> (uint8 RGB) thumbnails.
(latency.json is read by the comparison report, compare.py.)

Built-in sections live in common_sections.py (summary, diagnosis, training curves),
detection_sections.py (with the detection confusion matrix), gallery.py (predictions beside
ground truth, worst images first), segmentation_sections.py (segmentation metrics, confusion
matrix, worst images, anomaly segmentation) and analysis_sections.py (error analysis); compare.py builds the multi-run report with the same page template.
"""
from __future__ import annotations

import base64
import datetime as _dt
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import jinja2

import visiondoctor
from visiondoctor.report import (  # noqa: F401
    analysis_sections,
    common_sections,
    detection_sections,
    gallery,  # importing them registers the built-in sections
    segmentation_sections,
)
from visiondoctor.report.formatting import fmt
from visiondoctor.report.inputs import ReportInputError, cfg, read_config
from visiondoctor.report.sections import Figure, Paragraph, Section, SectionEntry, registered_sections
from visiondoctor.rundir import RunDir, write_bytes_atomic

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Skipped:
    title: str
    reason: str


def build_report(run_dir: str | Path) -> Path:
    """Write run_dir/report.html (and the plots under run_dir/plots/) and return its path."""
    run = RunDir.open(run_dir)
    sections, skipped = run_sections(run, registered_sections())
    save_figures(sections, run.plots)
    title = f"visiondoctor report — {_run_name(run)}"
    html = render_page(title, sections, skipped, subtitle=str(run.path.resolve()))
    return write_bytes_atomic(run.report, html.encode("utf-8"))


def _run_name(run: RunDir) -> str:
    try:
        return str(cfg(read_config(run), "name", run.path.name))
    except ReportInputError:
        return run.path.name


def _run_task(run: RunDir) -> str | None:
    """The run's task (config.yaml `task`); None when the config is missing, unreadable or names none."""
    try:
        task = cfg(read_config(run), "task")
    except ReportInputError:
        return None
    return str(task) if task else None


def run_sections(run: RunDir, entries: Sequence[SectionEntry]) -> tuple[list[Section], list[Skipped]]:
    """Each section of the run's task (the others are neither shown nor listed), in order; its
    builder returning None -> skipped (with the files it needs), raising -> shown with the error."""
    sections, skipped = [], []
    task = _run_task(run)
    for entry in (e for e in entries if e.applies_to(task)):
        try:
            section = entry.fn(run)
        except Exception as exc:  # one broken input must not cost the whole report
            log.debug("section %s failed:\n%s", entry.title, traceback.format_exc())
            section = Section(entry.title, [Paragraph(
                f"This section could not be built: {type(exc).__name__}: {exc}", "error")])
        if section is None and entry.optional:
            continue
        if section is None:
            needs = [n for n in entry.needs if not (run.path / n).exists()]
            reason = f"needs {', '.join(needs)}" if needs else "its inputs hold nothing to show"
            skipped.append(Skipped(entry.title, reason))
        else:
            sections.append(section)
    _unique_anchors(sections)
    return sections, skipped


def _unique_anchors(sections: list[Section]) -> None:
    seen: dict[str, int] = {}
    for s in sections:
        n = seen.get(s.anchor, 0)
        seen[s.anchor] = n + 1
        if n:
            s.anchor = f"{s.anchor}-{n + 1}"


def save_figures(sections: Sequence[Section], folder: Path) -> None:
    """Each drawn figure as folder/<name>.png (names made unique), for reuse outside the report."""
    used: set[str] = set()
    for section in sections:
        for fig in section.figures:
            if fig.png is None:
                continue
            name, i = fig.name, 2
            while name in used:
                name, i = f"{fig.name}_{i}", i + 1
            used.add(name)
            fig.name = name
            write_bytes_atomic(folder / f"{name}.png", fig.png)


def png_uri(fig: Figure) -> str:
    """data: URI of the figure, reading `source` now if the bytes are not in memory; "" if none."""
    data = fig.png
    if data is None and fig.source is not None and fig.source.is_file():
        data = fig.source.read_bytes()
    if not data or not data.startswith(b"\x89PNG"):
        return ""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["png_uri"] = png_uri
    return env


def render_page(title: str, sections: Sequence[Section], skipped: Sequence[Skipped] = (), subtitle: str = "") -> str:
    """The HTML page for these sections (used by the run report and the comparison report)."""
    return environment().get_template("report.html.j2").render(
        title=title, subtitle=subtitle, sections=sections, skipped=skipped,
        version=visiondoctor.__version__,
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    )
