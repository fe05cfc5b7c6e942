"""Sections every run has, whatever the task: summary, diagnosis, training curves."""
from __future__ import annotations

from typing import Any

from visiondoctor.findings import severity_counts, sort_findings
from visiondoctor.report import plots
from visiondoctor.report.curves import component_name, curve, gap, loss_columns, x_axis
from visiondoctor.report.formatting import count, evidence_rows, plot_reference
from visiondoctor.report.inputs import ReportInputError, cfg, confined, finite, read_config, read_history, read_json
from visiondoctor.report.sections import Figure, Heading, Paragraph, Section, Table, register_section
from visiondoctor.rundir import VAL_SPLIT, RunDir, split_file

# Headline metrics, in the order shown; a task's metrics.json may hold any of them.
KEY_METRICS = {
    "map": "mAP@[.5:.95]", "map50": "AP50", "map75": "AP75", "mar_100": "AR@100",
    "miou": "mIoU", "pixel_accuracy": "pixel accuracy", "auroc": "AUROC", "aupr": "AUPR", "fpr95": "FPR@95",
}


@register_section(0, title="Summary", needs=("config.yaml", "metrics.json"))
def summary_section(run: RunDir) -> Section:
    config = read_config(run)
    metrics = read_json(run, "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else {}
    try:
        history = read_history(run) or []
    except ReportInputError:
        history = []  # the training section names the problem; the summary goes without epochs
    blocks: list[Any] = []

    dataset = cfg(config, "data.path") or (f"synthetic: {cfg(config, 'data.synth')}" if cfg(config, "data.synth") else "n/a")
    epochs = [e for e in (finite(r.get("epoch")) for r in history) if e is not None]
    rows = [
        ("run", cfg(config, "name", run.path.name)),
        ("task", cfg(config, "task", "n/a")),
        ("model", cfg(config, "model.name", "n/a")),
        ("input size [px]", cfg(config, "model.image_size")),
        ("dataset", dataset),
        ("evaluated split", metrics.get("split", cfg(config, "eval.split", "n/a"))),
        ("evaluated images", metrics.get("num_images")),
        ("epochs trained", int(max(epochs)) + (1 if min(epochs) == 0 else 0) if epochs else None),
        ("weights", _weights_text(read_json(run, run.weights.name))),
        ("priors: best possible recall", _priors_text(read_json(run, run.priors.name))),
    ]
    blocks.append(Table(["", "value"], [r for r in rows if r[1] is not None]))

    warning = _subset_warning(metrics, config)
    if warning:
        blocks.append(Paragraph(warning, "warning"))

    key = [(label, metrics[k]) for k, label in KEY_METRICS.items() if finite(metrics.get(k)) is not None]
    split = metrics.get("split", cfg(config, "eval.split", VAL_SPLIT))
    if key:
        blocks.append(Table([label for label, _ in key], [[v for _, v in key]],
                            caption=f"Key metrics on the {split} split (metrics.json)"))
    elif not metrics:
        blocks.append(Paragraph("No metrics.json: this run has not been evaluated (`visiondoctor eval RUN_DIR`).", "note"))
    blocks += _evaluations(run, split)
    return Section("Summary", blocks)


def _weights_text(record: Any) -> str | None:
    """weights.json in a line: what the run started from and, for a fallback, why."""
    if not isinstance(record, dict):
        return None
    kind = {"pretrained": "pretrained (whole model)", "pretrained_backbone": "pretrained backbone",
            "file": "local file", "none": "none: trained from scratch"}.get(str(record.get("used")), str(record.get("used")))
    return f"{kind} — {record.get('source', '')}"


def _priors_text(record: Any) -> str | None:
    """priors.json in a line: best possible recall before and after the fit, and what was done."""
    if not isinstance(record, dict):
        return None
    before, after = finite(record.get("bpr_before")), finite(record.get("bpr_after"))
    if before is None:
        return str(record.get("note", "not measured"))
    where = (f"IoU >= {record.get('iou_threshold', 0.5)}, {record.get('num_boxes', '?')} training boxes in the "
             "model's input frame")
    searched = record.get("input") if isinstance(record.get("input"), dict) else {}
    if searched.get("chosen") and after is not None:  # the input changed: the note says what, at what cost, and why
        done = "the priors were refitted on a changed input" if record.get("refit") else "the input changed"
        return f"{before:.1%} before, {after:.1%} after {done} ({where}); {searched.get('note', '')}"
    if record.get("refit") and after is not None:
        text = f"{before:.1%} before, {after:.1%} after the priors were refitted ({where})"
    else:
        text = f"{before:.1%} ({where}); {record.get('note', '')}"
    return f"{text}; {searched['note']}" if searched.get("note") else text


def _evaluations(run: RunDir, shown: Any) -> list[Any]:
    """Which split each figure comes from: the sections below read the validation files (metrics.json, ...); a
    table lists every split evaluated (metrics_<split>.json from `visiondoctor eval RUN --split <split>`)."""
    rows = []
    for path in sorted(run.path.glob("metrics*.json")):
        split = VAL_SPLIT if path.name == "metrics.json" else path.stem.removeprefix("metrics_")
        if path.name != split_file("metrics.json", split):
            continue
        try:
            metrics = read_json(run, path.name)
        except ReportInputError:
            continue
        if not isinstance(metrics, dict):
            continue
        subset = metrics.get("subset") if isinstance(metrics.get("subset"), dict) else {}
        images = metrics.get("num_images", subset.get("evaluated_images"))
        primary = next(((label, metrics[k]) for k, label in KEY_METRICS.items() if finite(metrics.get(k)) is not None),
                       ("", None))
        rows.append([split, images if images is not None else "", f"{primary[0]} {primary[1]:.4f}" if primary[0] else "",
                     "subset" if subset else "whole split", path.name])
    if len(rows) < 2:
        return []
    return [Table(["split", "images", "primary metric", "evaluated on", "file"], rows,
                  caption=f"Every evaluated split. The sections below show the {shown} split (metrics.json, "
                          "predictions.json, gt.json and the files beside them); another split's figures are in "
                          "the files named after it.")]


def _subset_warning(metrics: dict[str, Any], config: dict[str, Any]) -> str | None:
    subset = metrics.get("subset")
    if isinstance(subset, dict):
        n, total = finite(subset.get("evaluated_images")), finite(subset.get("total_images"))
        if n is not None and (total is None or n < total):
            of = f" of {int(total)} ({n / total:.1%})" if total else ""
            return (f"Evaluated on a subset: {int(n)} images{of}. These metrics are a sample estimate, "
                    "not the figure for the whole split; evaluate on every image before quoting them.")
    max_images = finite(cfg(config, "eval.max_images"))
    if max_images and max_images > 0:
        return (f"The configuration limits evaluation to {int(max_images)} images (eval.max_images); "
                "metrics may come from a subset of the split.")
    return None


@register_section(10, title="Diagnosis", needs=("diagnosis.json",))
def diagnosis_section(run: RunDir) -> Section:
    data = read_json(run, "diagnosis.json")
    if data is None:
        return Section("Diagnosis", [Paragraph(
            "Diagnosis not run: this run has no diagnosis.json. `visiondoctor diagnose RUN_DIR` writes it.", "note")])
    findings = data.get("findings", []) if isinstance(data, dict) else data
    findings = sort_findings(f for f in findings if isinstance(f, dict))
    counts = severity_counts(findings)
    if not findings:
        return Section("Diagnosis", [Paragraph("The doctor ran its checks and found nothing to report.")])
    lead = (f"{count(len(findings), 'finding')}: {count(counts['error'], 'error')}, "
            f"{count(counts['warning'], 'warning')}, {counts['info']} info.")
    first = findings[0]
    if first.get("severity") in ("error", "warning"):
        lead += f" Root cause first: {first.get('title', first.get('id', ''))}."
    blocks: list[Any] = [Paragraph(lead)]
    for f in findings:
        blocks.append(Heading(str(f.get("title") or f.get("id", "finding")), badge=str(f.get("severity", "info"))))
        if f.get("cause"):
            blocks.append(Paragraph(f"Cause: {f['cause']}"))
        rows = evidence_rows(f)
        if rows:
            blocks.append(Table(["evidence", "value"], rows))
        ref = plot_reference(f)
        if ref:
            path = confined(run.path, ref)
            if path is not None:
                blocks.append(Figure(name=path.stem, source=path, caption=ref))
            else:
                blocks.append(Paragraph(f"plot {ref} is outside the run directory; not shown", "note"))
        if f.get("fix"):
            blocks.append(Paragraph(f"Fix: {f['fix']}"))
        where = f"Where: {f['where']} · " if f.get("where") else ""
        blocks.append(Paragraph(f"{where}ID: {f.get('id', 'n/a')}", "note"))
    return Section("Diagnosis", blocks)


OPTIMISATION = {"lr": "learning rate", "grad_norm": "gradient norm (L2)", "images_per_s": "throughput [images/s]"}


@register_section(30, title="Training curves", needs=("history.csv",))
def training_section(run: RunDir) -> Section | None:
    rows = read_history(run)
    if not rows:
        return None
    xname = x_axis(rows)
    columns = loss_columns(rows)
    blocks: list[Any] = []
    if columns:
        panels = {}
        for col in columns:
            series = []
            for i, split in enumerate(("train", "val")):
                c = curve(rows, col, split, xname)
                if c.y:
                    series.append(plots.Series(split, c.x, c.y, color=i, dashed=split == "val",
                                               markers=split == "val", smooth=split == "train"))
            panels[component_name(col)] = series
        blocks.append(Figure("loss_curves", plots.curve_panels(
            panels, "Loss per component: training vs validation", xname),
            caption="Each loss component on its own axes; training faint per step with a moving average, validation dashed."))
        gaps = [gap(rows, col) for col in columns]
        blocks.append(Table(
            ["component", "train (last epoch)", "val (last)", "val − train", "best val", "best at epoch", "what the curves show"],
            [[g.component, g.train, g.val, g.difference, g.best_val, g.best_epoch, g.judgement] for g in gaps],
            caption="A validation loss above the training loss is not by itself overfitting (augmentation acts only in "
                    "training); a validation curve that rises while training keeps falling is."))
    else:
        blocks.append(Paragraph("history.csv has no loss columns (loss, loss_<component>).", "note"))
    opt = {}
    for col, label in OPTIMISATION.items():
        c = curve(rows, col, "train", xname)
        if c.y:
            opt[label] = [plots.Series("train", c.x, c.y, smooth=col != "lr")]
    if opt:
        blocks.append(Figure("optimisation", plots.curve_panels(
            opt, "Optimisation", xname, ylabel={k: k for k in opt})))
    val_metrics = {label: [plots.Series("val", c.x, c.y, color=1, markers=True)]
                   for col, label in KEY_METRICS.items()
                   if len((c := curve(rows, col, "val", xname)).y) >= 2}
    if val_metrics:
        blocks.append(Figure("validation_metrics", plots.curve_panels(
            val_metrics, "Validation metrics during training", xname, ylabel={k: k for k in val_metrics}, cols=4)))
    return Section("Training curves", blocks)
