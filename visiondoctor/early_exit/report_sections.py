"""The report's "Early exit" section, from early_exit.json (written by early_exit/analysis.py):
the policy and its budget, full model vs early exit, each exit forced, the exit distribution,
latency per exit (eager PyTorch, ONNX Runtime), the confidence signal's measured quality, the
speed–accuracy curve with the operating point marked, and images labelled with their exit."""
from __future__ import annotations

from typing import Any, Sequence

from visiondoctor.report import plots
from visiondoctor.report.formatting import fmt
from visiondoctor.report.inputs import finite, read_json
from visiondoctor.report.sections import Figure, Heading, Paragraph, Section, Table, register_section
from visiondoctor.rundir import RunDir

FORCED_COLOURS = ("C2", "C4", "C1", "C5", "C6")
RUNTIME_NAMES = {"pytorch": "eager PyTorch (CPU)", "onnxruntime": "ONNX Runtime (CPU)",
                 "pytorch_cuda": "eager PyTorch (CUDA)"}


@register_section(65, title="Early exit", needs=("early_exit.json",), optional=True)
def early_exit_section(run: RunDir) -> Section | None:
    data = read_json(run, "early_exit.json")
    if not isinstance(data, dict) or "exit_names" not in data:
        return None
    names: list[str] = list(data["exit_names"])
    point = data.get("operating_point") or {}
    blocks: list[Any] = [Paragraph(_summary(data, names))]
    if point and not point.get("budget_met", True):
        blocks.append(Paragraph("No threshold setting met the budget on the calibration split; the closest "
                                "operating point is shown.", "warning"))
    blocks.append(Table(["", *_split_columns(data)], _comparison_rows(data), caption="Full model vs early exit"))
    blocks.append(Table(["exit", "branch", "feature maps", "strides", *[f"mAP forced ({s})" for s in data.get("forced_exit", {})],
                         "share of images", "latency to leave here [ms]", "GFLOPs"], _exit_rows(data, names),
                        caption="Each exit: accuracy when every image is forced to leave there; share of images and "
                                "mean latency (eager PyTorch, batch 1) under the calibrated policy"))
    blocks += _latency_blocks(data, names)
    blocks += _signal_blocks(data, names)
    frontier = data.get("frontier", {})
    if frontier.get("points"):
        blocks.append(Heading("Speed–accuracy curve"))
        blocks.append(Figure("early_exit_frontier", frontier_plot(frontier["points"], frontier.get("pareto", []), point,
                                                                  data)))
    if (run.plots / "early_exit_gallery.png").exists():
        blocks.append(Heading("Where images left"))
        blocks.append(Figure("early_exit_gallery", source=run.plots / "early_exit_gallery.png",
                             caption="Ground truth (left) and the early-exit model's detections (right), titled with "
                                     "the exit each image left at and its confidence there."))
    for f in data.get("findings", []):
        blocks.append(Paragraph(f"Doctor [{f.get('severity')}] {f.get('id')}: {f.get('title')}",
                                "error" if f.get("severity") == "error" else "warning"))
    return Section("Early exit", blocks)


def _summary(data: dict[str, Any], names: Sequence[str]) -> str:
    budget = data.get("budget", {})
    if "max_map_drop" in budget:
        points = round(100 * float(budget["max_map_drop"]), 3)
        goal = f"at most {points:g} mAP point{'' if points == 1 else 's'} lost against the full model"
    else:
        goal = f"a mean latency of at most {fmt(budget.get('target_latency_ms'))} ms per image"
    thresholds = data.get("policy", {}).get("thresholds", [])
    rule = ", ".join(f"{n} if confidence ≥ {fmt(t)}" if t is not None else f"{n} never"
                     for n, t in zip(names, thresholds))
    return (f"An image leaves at the first exit whose confidence ({data.get('policy', {}).get('signal')}) reaches "
            f"that exit's threshold: {rule}; the full model takes the rest. Thresholds calibrated on the "
            f"{data.get('calibration_split')} split for {goal}.")


def _split_columns(data: dict[str, Any]) -> list[str]:
    cal = data.get("calibration_split", "calibration")
    held = data.get("held_out_split")
    return [f"{cal} (calibration)"] + ([f"{held} (held out)"] if held else [])


def _comparison_rows(data: dict[str, Any]) -> list[list[Any]]:
    point, held = data.get("operating_point", {}), data.get("held_out") or None
    flops = data.get("flops") or {}
    full_map = (point.get("map") or 0.0) + (point.get("map_drop") or 0.0)
    rows: list[list[Any]] = [
        ["mAP@[.5:.95] full model", full_map] + ([held.get("full_map")] if held else []),
        ["mAP@[.5:.95] early exit", point.get("map")] + ([held.get("map")] if held else []),
        ["mAP points lost", _points(point.get("map_drop"))] + ([_points(held.get("map_drop"))] if held else []),
        ["predicted latency cut (eager)", _pct(point.get("latency_cut"))] + ([_pct(held.get("latency_cut"))] if held else []),
        ["FLOPs cut", _pct(flops.get("calibration", {}).get("cut"))]
        + ([_pct(flops.get("held_out", {}).get("cut"))] if held else []),
        ["exit distribution", _dist(point.get("distribution"), data["exit_names"])]
        + ([_dist(held.get("distribution"), data["exit_names"])] if held else []),
    ]
    return rows


def _exit_rows(data: dict[str, Any], names: Sequence[str]) -> list[list[Any]]:
    specs = data.get("exit_specs", [])
    forced = data.get("forced_exit", {})
    share = data.get("operating_point", {}).get("distribution", [])
    per_exit = data.get("latency", {}).get("pytorch", {}).get("predicted", {}).get("per_exit_ms", [])
    flops = (data.get("flops") or {}).get("per_exit") or []
    rows = []
    for k, name in enumerate(names):
        spec = specs[k] if k < len(specs) else {}
        sizes = " ".join(f"{h}×{w}" for h, w in spec.get("sizes", []))
        rows.append([name, spec.get("branch_feature"), sizes, fmt(spec.get("strides")),
                     *[(m[k] or {}).get("map") if k < len(m) else None for m in forced.values()],
                     _pct(share[k]) if k < len(share) else None, per_exit[k] if k < len(per_exit) else None,
                     flops[k] / 1e9 if k < len(flops) and flops[k] else None])
    return rows


def _latency_blocks(data: dict[str, Any], names: Sequence[str]) -> list[Any]:
    latency = data.get("latency", {})
    rows, notes = [], []
    for runtime, label in RUNTIME_NAMES.items():
        entry = latency.get(runtime) or {}
        if "skipped" in entry:
            notes.append(f"{label}: not measured ({entry['skipped']}).")
            continue
        measured = entry.get("measured") or {}
        full, early = measured.get("full") or {}, measured.get("early_exit") or {}
        if not full:
            continue
        rows.append([label, full.get("mean_ms"), full.get("median_ms"), early.get("mean_ms"), early.get("median_ms"),
                     _pct(measured.get("latency_cut")), (entry.get("predicted") or {}).get("policy_ms")])
    blocks: list[Any] = [Heading("Latency")]
    if rows:
        blocks.append(Table(["runtime", "full mean [ms]", "full median [ms]", "early exit mean [ms]",
                             "early exit median [ms]", "mean cut", "predicted early exit mean [ms]"], rows,
                            caption=f"Per image, batch 1, {latency.get('device', 'cpu')}, {latency.get('threads')} "
                                    f"thread(s), measured on {latency.get('images')} images (full model and policy "
                                    "interleaved, after warm-up); 'predicted' = path latencies weighted by the "
                                    "calibration split's exit distribution"))
    path_rows = []
    for runtime, label in RUNTIME_NAMES.items():
        for name, stats in ((latency.get(runtime) or {}).get("path_stats") or {}).items():
            path_rows.append([label, name, stats.get("mean_ms"), stats.get("median_ms"), stats.get("p90_ms")])
    if path_rows:
        blocks.append(Table(["runtime", "path (leave at, after the heads of)", "mean [ms]", "median [ms]", "p90 [ms]"],
                            path_rows, caption="Every path an image can take"))
    blocks += [Paragraph(n, "note") for n in notes]
    return blocks


def _signal_blocks(data: dict[str, Any], names: Sequence[str]) -> list[Any]:
    signal = data.get("signal", {})
    table = signal.get("signals") or {}
    if not table:
        return []
    early = names[:-1]
    rows = []
    for name, row in table.items():
        cells = []
        for exit_name in early:
            r = row.get(exit_name) or {}
            cells += [r.get("vs_ap"), r.get("vs_gap")]
        rows.append([name + (" (chosen)" if name == signal.get("chosen") else ""), *cells, row.get("mean_vs_gap")])
    columns = ["signal"] + [c for n in early for c in (f"{n}: ρ vs AP", f"{n}: ρ vs AP gap")] + ["mean ρ vs gap"]
    return [Heading("Confidence signal"),
            Paragraph("Spearman rank correlation, per image of the calibration split, between each candidate "
                      "confidence and (a) that exit's AP@[.5:.95] on the image, (b) its AP gap to the full model "
                      "(exit AP − full AP). The policy needs (b): a high confidence should mean leaving early "
                      "costs nothing; the signal with the highest mean (b) is used."),
            Table(columns, rows, caption=f"{signal.get('images')} images with ground truth")]


def frontier_plot(points: Sequence[dict[str, Any]], pareto: Sequence[dict[str, Any]], chosen: dict[str, Any],
                  data: dict[str, Any]) -> bytes:
    """mAP against predicted mean latency for every threshold setting; Pareto front, full model,
    forced exits and the chosen operating point marked."""
    fig = plots.new_figure(6.0, 4.2)
    ax = fig.add_subplot()
    xs = [finite(p.get("latency_ms")) for p in points]
    ys = [finite(p.get("map")) for p in points]
    ax.scatter(xs, ys, s=10, color="0.7", label=f"threshold settings ({len(points)})")
    if pareto:
        ax.plot([p["latency_ms"] for p in pareto], [p["map"] for p in pareto], "-o", color="C0", markersize=3,
                label="Pareto front")
    predicted = (data.get("latency", {}).get("pytorch", {}) or {}).get("paths") or []
    forced = next(iter(data.get("forced_exit", {}).values()), [])
    for k, name in enumerate(data.get("exit_names", [])):
        # Every image forced to this exit, no earlier head run (the cheapest way to leave there).
        ms = next((r["mean_ms"] for r in predicted if r["exit"] == k and not any(r["heads_run_before"])), None)
        value = (forced[k] or {}).get("map") if k < len(forced) else None
        if ms is not None and value is not None:
            ax.scatter([ms], [value], marker="s", s=30, color=FORCED_COLOURS[k % len(FORCED_COLOURS)],
                       label=f"{name} alone" if k < len(data["exit_names"]) - 1 else "full model alone")
    if chosen:
        ax.scatter([chosen["latency_ms"]], [chosen["map"]], marker="*", s=180, color="C3", zorder=5,
                   label="chosen operating point")
    ax.set_xlabel("predicted mean latency per image [ms] (eager PyTorch, CPU)")
    ax.set_ylabel("mAP@[.5:.95] (calibration split)")
    ax.set_title("Early exit: speed–accuracy over thresholds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return plots.to_png(fig)


def _points(drop: Any) -> str | None:
    value = finite(drop)
    return None if value is None else f"{100 * value:.2f}"


def _pct(value: Any) -> str | None:
    v = finite(value)
    return None if v is None else f"{100 * v:.1f}%"


def _dist(values: Any, names: Sequence[str]) -> str | None:
    if not isinstance(values, list):
        return None
    return ", ".join(f"{n} {100 * float(v):.0f}%" for n, v in zip(names, values))
