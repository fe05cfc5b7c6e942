"""One report for several runs on the same data (`visiondoctor compare RUN_DIR...`).

    build_comparison_report(run_dirs, out) -> out (an .html path; a folder gets comparison.html)

Reads only the run directories (the files documented in html.py) plus, when present,
`latency.json` written by the speed measurement:
    {"device": "cpu", "image_size": 320, "batch_size": 1, "params": 3.4e6, "flops": 1.2e9,
     "latency_ms": {"pytorch": 41.2, "onnxruntime": 18.9}}   (ms per image; a bare number = pytorch)

Runs evaluated on different data are refused (ComparisonError naming the runs): the
evaluated images in gt.json (ids and file names) must agree; without gt.json in every run,
config.yaml's data.path / data.synth and eval.split must. Loss curves are compared per
epoch (runs may differ in batch size, so steps do not line up).

When every run has gt.json and predictions.json (what `train` and `eval` write) and they
reproduce its metrics.json, mAP and AP50 get 95 % bootstrap intervals over the evaluated
images and every pair of runs a paired test (visiondoctor.evaluation.bootstrap): the report
and `compare_runs(...).significance` say which differences are larger than the noise of
the split. Otherwise the report says why there are no intervals, and a margin below TIE
is called no clear winner.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visiondoctor.evaluation.bootstrap import BootstrapComparison, compare_scores, image_scores
from visiondoctor.findings import severity_counts, sort_findings
from visiondoctor.report import plots
from visiondoctor.report.curves import component_name, gap, loss_columns
from visiondoctor.report.formatting import count
from visiondoctor.report.html import render_page, save_figures
from visiondoctor.report.inputs import cfg, finite, read_config, read_history, read_json
from visiondoctor.report.sections import Figure, Paragraph, Section, Table
from visiondoctor.rundir import RunDir, write_bytes_atomic

COMPARED_METRICS = {"map": "mAP@[.5:.95]", "map50": "AP50", "map75": "AP75", "mar_100": "AR@100",
                    "map_small": "AP small", "map_medium": "AP medium", "map_large": "AP large"}
TIE = 0.01  # without per-image results: mAP differences below this are not called a win
SIGNIFICANCE_METRICS = ("map", "map50")
METRIC_NAMES = {"map": "mAP", "map50": "AP50"}
REPRODUCE_TOLERANCE = 1e-6  # predictions.json must give metrics.json's mAP to this


class ComparisonError(ValueError):
    pass


@dataclass
class Run:
    name: str
    run: RunDir
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    latency: dict[str, Any]

    @property
    def model(self) -> str:
        return str(cfg(self.config, "model.name", "n/a"))

    @property
    def map(self) -> float | None:
        return finite(self.metrics.get("map"))


def load_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    if len(run_dirs) < 2:
        raise ComparisonError("compare needs at least two run directories")
    runs = []
    for d in run_dirs:
        rd = RunDir.open(d)
        config = read_config(rd)
        runs.append(Run(str(cfg(config, "name", rd.path.name)), rd, config,
                        _dict(read_json(rd, "metrics.json")), read_history(rd) or [], _dict(read_json(rd, "latency.json"))))
    names = [r.name for r in runs]
    for r in runs:  # two runs with the same name: tell them apart by their folders
        if names.count(r.name) > 1:
            r.name = f"{r.name} ({r.run.path.parent.name}/{r.run.path.name})"
    return runs


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def data_fingerprint(run: Run, use_gt: bool) -> tuple[str, Any]:
    """What the run was evaluated on: (description, comparable key)."""
    if use_gt:
        gt = _dict(read_json(run.run, "gt.json"))
        images = sorted((im.get("id"), str(im.get("file_name"))) for im in gt.get("images", []) if isinstance(im, dict))
        return f"{len(images)} images in gt.json", (tuple(images), len(gt.get("annotations") or []))
    data = cfg(run.config, "data.path") or cfg(run.config, "data.synth")
    if not data:
        raise ComparisonError(f"cannot tell what data run {run.name} ({run.run.path}) was evaluated on: "
                              "no gt.json and no data.path / data.synth in config.yaml")
    split = cfg(run.config, "eval.split", "val")
    return f"{data} (split {split})", (str(data), str(split), cfg(run.config, "data.synth_images"))


def check_same_data(runs: Sequence[Run]) -> None:
    """Raise ComparisonError naming the runs when they were evaluated on different data."""
    use_gt = all((r.run.path / "gt.json").exists() for r in runs)
    groups: dict[Any, list[str]] = {}
    described: dict[Any, str] = {}
    for r in runs:
        desc, key = data_fingerprint(r, use_gt)
        groups.setdefault(key, []).append(r.name)
        described[key] = desc
    if len(groups) > 1:
        parts = "; ".join(f"{', '.join(names)} on {described[k]}" for k, names in groups.items())
        basis = "the evaluated images (gt.json) differ" if use_gt else "data.path / eval.split in config.yaml differ"
        raise ComparisonError(f"runs were evaluated on different data ({basis}): {parts}. "
                              "Evaluate them on the same split (`visiondoctor eval RUN --split ...`) before comparing.")


def run_significance(runs: Sequence[Run]) -> tuple[BootstrapComparison | None, str]:
    """Bootstrap intervals and paired differences from the runs' gt.json and predictions.json, or
    None and the reason there are none."""
    scores = {}
    for r in runs:
        gt, predictions = read_json(r.run, "gt.json"), read_json(r.run, "predictions.json")
        if not isinstance(gt, dict) or not isinstance(predictions, list):
            return None, f"{r.name} has no gt.json / predictions.json (evaluate it with `visiondoctor eval`)"
        try:
            scores[r.name] = image_scores(gt, predictions)
        except (ValueError, KeyError, TypeError) as exc:
            return None, f"{r.name}: its predictions.json cannot be evaluated against its gt.json ({exc})"
        reproduced = scores[r.name].metrics(None, ("map",))["map"]
        if r.map is None or reproduced is None or abs(reproduced - r.map) > REPRODUCE_TOLERANCE:
            return None, (f"{r.name}: predictions.json and gt.json give mAP {reproduced}, metrics.json says {r.map} "
                          "(files from different evaluations)")
    try:
        return compare_scores(scores, SIGNIFICANCE_METRICS), ""
    except ValueError as exc:
        return None, str(exc)


@dataclass
class Comparison:
    """What `visiondoctor compare` produced: the report and, when measurable, the intervals."""

    path: Path
    runs: list[Run]
    significance: BootstrapComparison | None
    no_significance_reason: str


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Comparison:
    """Compare `run_dirs` (same evaluated images), write the report to `out` (an .html path; a folder
    gets comparison.html)."""
    runs = load_runs(run_dirs)
    check_same_data(runs)
    significance, reason = run_significance(runs)
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out / "comparison.html"
    sections = [s for s in (summary_section(runs, significance, reason), significance_section(significance),
                            metrics_section(runs), per_class_section(runs), curves_section(runs), gap_section(runs),
                            speed_section(runs)) if s is not None]
    save_figures(sections, out.parent / f"{out.stem}_plots")
    html = render_page(f"visiondoctor comparison — {', '.join(r.name for r in runs)}", sections,
                       subtitle=" · ".join(str(r.run.path.resolve()) for r in runs))
    return Comparison(write_bytes_atomic(out, html.encode("utf-8")), runs, significance, reason)


def build_comparison_report(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write the comparison report of `run_dirs` to `out` and return its path."""
    return compare_runs(run_dirs, out).path


# ---------------------------------------------------------------- sections

def interval_rows(runs: Sequence[Run], significance: BootstrapComparison) -> tuple[list[str], list[list[Any]]]:
    """Each run's metrics with their intervals: the table of the report and of the console."""
    columns = ["run", "model"] + [f"{METRIC_NAMES[k]} [95 % interval]" for k in SIGNIFICANCE_METRICS]
    return columns, [[r.name, r.model] + [str(significance.intervals[r.name][k]) for k in SIGNIFICANCE_METRICS]
                     for r in runs]


def difference_rows(significance: BootstrapComparison) -> tuple[list[str], list[list[Any]]]:
    """Every pair's difference (higher minus lower), its paired interval and whether it is significant."""
    columns = ["metric", "runs (higher − lower)", "difference [95 % interval]", "significant"]
    rows = [[METRIC_NAMES[d.metric], f"{d.a} − {d.b}", d.signed(), "yes" if d.significant else "no"]
            for d in significance.differences]
    return columns, rows


def summary_section(runs: Sequence[Run], significance: BootstrapComparison | None = None,
                    no_significance_reason: str = "") -> Section:
    rows = []
    for r in runs:
        findings = read_json(r.run, "diagnosis.json")
        findings = findings.get("findings", []) if isinstance(findings, dict) else findings
        if isinstance(findings, list):
            c = severity_counts(f for f in findings if isinstance(f, dict))
            first = sort_findings(f for f in findings if isinstance(f, dict))
            doctor = f"{count(c['error'], 'error')}, {count(c['warning'], 'warning')}"
            if first and first[0].get("severity") == "error":
                doctor += f": {first[0].get('title', first[0].get('id'))}"
        else:
            doctor = "not run"
        epochs = [e for e in (finite(h.get("epoch")) for h in r.history) if e is not None]
        rows.append([r.name, r.model, cfg(r.config, "model.image_size"), max(epochs) if epochs else None,
                     r.metrics.get("num_images"), r.map, doctor])
    columns = ["run", "model", "input size [px]", "last epoch", "evaluated images", "mAP", "doctor"]
    if significance is not None:
        columns.insert(6, "mAP 95 % interval")
        for row, r in zip(rows, runs):
            iv = significance.intervals[r.name]["map"]
            row.insert(6, "n/a" if iv.low is None else f"{iv.low:.3f} – {iv.high:.3f}")
    blocks: list[Any] = [Paragraph(recommendation(runs, significance)), Table(columns, rows)]
    if significance is None and no_significance_reason:
        blocks.append(Paragraph(f"No confidence intervals: {no_significance_reason}.", "note"))
    subsets = [r.name for r in runs if isinstance(r.metrics.get("subset"), dict)]
    if subsets:
        blocks.append(Paragraph(f"Evaluated on a subset of the split: {', '.join(subsets)}. Differences smaller than "
                                "the sampling error of a subset are not meaningful.", "warning"))
    return Section("Comparison summary", blocks)


def recommendation(runs: Sequence[Run], significance: BootstrapComparison | None = None) -> str:
    """One line grounded in the numbers: best mAP, its margin (and whether it is larger than the
    split's noise, when measured), and speed when measured."""
    scored = sorted((r for r in runs if r.map is not None), key=lambda r: -(r.map or 0))
    if not scored:
        return "No run has metrics.json: evaluate the runs before comparing them."
    best = scored[0]
    line = f"Recommendation: {best.name} ({best.model}) has the highest mAP, {best.map:.3f}"
    if len(scored) > 1:
        second = scored[1]
        margin = best.map - second.map
        diff = significance.difference(best.name, second.name, "map") if significance else None
        if diff is not None and not diff.significant:
            line = (f"Recommendation: no clear winner on accuracy: {best.name} ({best.map:.3f}) and {second.name} "
                    f"({second.map:.3f}) differ by {diff.signed()} (95 % interval), within the noise of the "
                    f"{significance.images} evaluated images")
        elif diff is None and margin < TIE:
            line = (f"Recommendation: no clear winner on accuracy: {best.name} ({best.map:.3f}) and "
                    f"{second.name} ({second.map:.3f}) are within {TIE}")
        else:
            line += f", {margin:.3f} above {second.name} ({second.map:.3f})"
            if diff is not None:
                line += f", a significant difference ({diff.signed()}, 95 % interval)"
    fast = {r.name: lat[0] for r in runs if (lat := _latency(r))}
    if len(fast) > 1:
        fastest = min(fast, key=fast.get)
        if fastest != best.name and best.name in fast:
            line += f"; {fastest} is {fast[best.name] / fast[fastest]:.1f}× faster ({fast[fastest]:.1f} vs {fast[best.name]:.1f} ms per image)"
        elif fastest == best.name:
            line += ", and it is also the fastest"
    judgement = gap(best.history, "loss").judgement
    if judgement.startswith("overfitting"):
        line += f". Its curves show {judgement.split(';')[0]}"
    return line + "."


def significance_section(significance: BootstrapComparison | None) -> Section | None:
    if significance is None:
        return None
    return Section("Is the difference real?", [
        Table(*difference_rows(significance)),
        Paragraph(f"{significance.describe()}. Both runs of a pair are scored on the same "
                  "resampled images (a paired bootstrap), which removes the variation of the images they share; "
                  "the interval says nothing about how much another training seed would move a run.", "note")])


def metrics_section(runs: Sequence[Run]) -> Section | None:
    keys = [k for k in COMPARED_METRICS if any(finite(r.metrics.get(k)) is not None for r in runs)]
    if not keys:
        return None
    rows = []
    for k in keys:
        values = [finite(r.metrics.get(k)) for r in runs]
        known = [v for v in values if v is not None]
        best = [r.name for v, r in zip(values, runs) if known and v == max(known)]
        rows.append([COMPARED_METRICS[k]] + values + ["tie" if len(best) == len(runs) else ", ".join(best)])
    return Section("Metrics side by side", [Table(["metric"] + [r.name for r in runs] + ["best"], rows)])


def per_class_section(runs: Sequence[Run]) -> Section | None:
    groups = {r.name: {str(k): finite(_dict(v).get("ap")) for k, v in _dict(r.metrics.get("per_class")).items()}
              for r in runs}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return None
    classes = list(dict.fromkeys(c for g in groups.values() for c in g))
    rows = [[c] + [groups.get(r.name, {}).get(c) for r in runs] for c in classes]
    return Section("Per-class AP", [
        Figure("per_class_ap", plots.horizontal_bars(groups, "AP@[.5:.95] per class and run", "AP", xlim=(0, 1)),
               caption=f"Classes ordered by {next(iter(groups))}'s AP, lowest at the top."),
        Table(["class"] + [r.name for r in runs], rows)])


def epoch_means(rows: Sequence[dict[str, Any]], column: str, split: str) -> tuple[list[float], list[float]]:
    """Per-epoch mean of a column for one split (runs compared per epoch, not per step)."""
    by_epoch: dict[float, list[float]] = {}
    for r in rows:
        e, v = finite(r.get("epoch")), finite(r.get(column))
        if str(r.get("split", "train")) == split and e is not None and v is not None:
            by_epoch.setdefault(e, []).append(v)
    xs = sorted(by_epoch)
    return xs, [float(np.mean(by_epoch[x])) for x in xs]


def curves_section(runs: Sequence[Run]) -> Section | None:
    columns = list(dict.fromkeys(c for r in runs for c in loss_columns(r.history)))
    if not columns:
        return None
    panels = {}
    for col in columns:
        series = []
        for i, r in enumerate(runs):
            for split in ("train", "val"):
                x, y = epoch_means(r.history, col, split)
                if y:
                    series.append(plots.Series(f"{r.name} {split}", x, y, color=i, dashed=split == "val",
                                               markers=split == "val"))
        panels[component_name(col)] = series
    return Section("Training and validation curves", [
        Figure("loss_curves", plots.curve_panels(panels, "Loss per component: training (solid) vs validation (dashed)",
                                                 "epoch", cols=2)),
        Paragraph("One colour per run; each component on its own axes, shared by every run that has it. Loss "
                  "definitions differ between architectures, so compare each run's training and validation curves "
                  "with each other, not loss levels across architectures.", "note")])


def gap_section(runs: Sequence[Run]) -> Section | None:
    rows = []
    for r in runs:
        for col in loss_columns(r.history):
            g = gap(r.history, col)
            rows.append([r.name, g.component, g.train, g.val, g.difference, g.judgement])
    if not rows:
        return None
    return Section("Generalisation gap", [
        Table(["run", "component", "train (last epoch)", "val (last)", "val − train", "what the curves show"], rows),
        Paragraph("A validation loss above the training loss is not proof of overfitting (augmentation and dropout act "
                  "only in training); a validation loss that rises from its minimum while training keeps falling is.",
                  "note")])


def _latency(r: Run) -> tuple[float, str] | None:
    lat = r.latency.get("latency_ms")
    if finite(lat) is not None:
        return float(lat), "pytorch"
    if isinstance(lat, dict):
        known = {k: float(v) for k, v in lat.items() if finite(v) is not None}
        if known:
            k = "pytorch" if "pytorch" in known else min(known, key=known.get)
            return known[k], k
    return None


def speed_section(runs: Sequence[Run]) -> Section | None:
    if not any(r.latency for r in runs):
        return None
    runtimes = list(dict.fromkeys(k for r in runs for k in _dict(r.latency.get("latency_ms"))))
    if not runtimes and any(finite(r.latency.get("latency_ms")) is not None for r in runs):
        runtimes = ["pytorch"]
    rows = []
    for r in runs:
        lat = r.latency.get("latency_ms")
        per_rt = _dict(lat) if isinstance(lat, dict) else {"pytorch": lat}
        rows.append([r.name, r.latency.get("device"), r.latency.get("image_size"), _millions(r.latency.get("params")),
                     _giga(r.latency.get("flops"))] + [per_rt.get(rt) for rt in runtimes])
    devices = {str(r.latency.get("device")) for r in runs if r.latency}
    blocks: list[Any] = [Table(["run", "device", "input size [px]", "parameters [M]", "FLOPs [G]"]
                               + [f"{rt} [ms/image]" for rt in runtimes], rows)]
    if len(devices) > 1:
        blocks.append(Paragraph(f"Latencies were measured on different devices ({', '.join(sorted(devices))}): "
                                "they are not comparable.", "warning"))
    return Section("Speed", blocks)


def _millions(v: Any) -> float | None:
    f = finite(v)
    return None if f is None else f / 1e6


def _giga(v: Any) -> float | None:
    f = finite(v)
    return None if f is None else f / 1e9

