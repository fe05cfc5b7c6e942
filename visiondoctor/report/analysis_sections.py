"""Error analysis: the TIDE-style split of the missing AP (errors.json) and the score-IoU
consistency of detections (consistency.json).

The producers (evaluation/errors.py, evaluation/consistency.py) may add keys, so the reading
is tolerant: the parts the report knows are drawn and summarised in words, and every other
dict of numbers becomes a table.
"""
from __future__ import annotations

from typing import Any

from visiondoctor.report import plots
from visiondoctor.report.formatting import fmt, flatten
from visiondoctor.report.inputs import finite, read_json
from visiondoctor.report.sections import Figure, Heading, Paragraph, Section, Table, register_section
from visiondoctor.rundir import RunDir

TIDE_TYPES = {"cls", "loc", "both", "dupe", "bkg", "miss", "classification", "localization", "localisation",
              "duplicate", "background", "missed"}
MAX_LIST = 8  # lists longer than this are drawn or left out, never tabulated


@register_section(80, title="Error analysis", needs=("errors.json", "consistency.json"), tasks=("detection",))
def error_analysis_section(run: RunDir) -> Section | None:
    blocks: list[Any] = []
    errors = read_json(run, "errors.json")
    if errors is not None:
        blocks += tide_blocks(errors)
    consistency = read_json(run, "consistency.json")
    if consistency is not None:
        blocks += consistency_blocks(consistency)
    return Section("Error analysis", blocks) if blocks else None


def tide_blocks(errors: Any) -> list[Any]:
    blocks: list[Any] = [Heading("Where the AP goes (TIDE-style error split)"), Paragraph(
        "ΔAP per error type, as in TIDE: ΔAP is the AP50 gained if every error of that type were fixed, "
        "all other errors left as they are.")]
    dap = _tide_values(errors)
    if dap:
        ranked = sorted(dap.items(), key=lambda kv: -kv[1])
        top = [f"{name} (ΔAP {fmt(v)})" for name, v in ranked[:2] if v > 0]
        if top:
            blocks.append(Paragraph(f"Most AP is lost to {' then '.join(top)}."))
        blocks.append(Figure("tide_errors", plots.value_bars(dap, "AP50 lost per error type", "ΔAP50")))
    blocks += generic_tables(errors, "errors.json")
    return blocks


def consistency_blocks(data: Any) -> list[Any]:
    blocks: list[Any] = [Heading("Score–IoU consistency"), Paragraph(
        "A detector whose scores track box quality ranks its best boxes first; confident "
        "detections on nothing (high score, low IoU) mean training and inference disagree.")]
    if isinstance(data, dict):
        rho, n = finite(data.get("spearman")), finite(data.get("n"))
        if rho is not None:
            over = f" over {int(n)} detections" if n is not None else ""
            blocks.append(Paragraph(f"Spearman rank correlation of score and IoU: {rho:.3f}{over} "
                                    "(1 = scores order boxes by IoU, 0 = no relation)."))
    pairs = _pairs(data)
    if pairs:
        line = _binned_mean(data)
        bad = data.get("high_score_low_iou") if isinstance(data, dict) else None
        region = None
        if isinstance(bad, dict) and finite(bad.get("score_threshold")) is not None and finite(bad.get("iou_threshold")) is not None:
            region = (float(bad["score_threshold"]), float(bad["iou_threshold"]))
        blocks.append(Figure("score_iou", plots.scatter(
            pairs[0], pairs[1], "Score against IoU with the best ground truth", "detection score",
            "IoU with best same-class ground truth", line=line, high_score_low_iou=region)))
    blocks += generic_tables(data, "consistency.json")
    return blocks


def _tide_values(data: Any) -> dict[str, float] | None:
    """The ΔAP per error type: the first dict (top level, or "dap"/"dAP" first among the sub-dicts)
    keyed by at least three TIDE error types, with numbers."""
    if not isinstance(data, dict):
        return None
    candidates = [data] + [data.get(k) for k in ("dap", "dAP")] + list(data.values())
    for c in candidates:
        if not isinstance(c, dict):
            continue
        nums = {str(k): float(v) for k, v in c.items() if finite(v) is not None}
        if len({k.lower() for k in nums} & TIDE_TYPES) >= 3:
            return nums
    return None


def _pairs(data: Any) -> tuple[list[float], list[float]] | None:
    """(scores, ious) lists of equal length, at the top level or in one sub-dict."""
    if not isinstance(data, dict):
        return None
    for holder in [data] + [v for v in data.values() if isinstance(v, dict)]:
        s = holder.get("score", holder.get("scores"))
        i = holder.get("iou", holder.get("ious"))
        if isinstance(s, list) and isinstance(i, list) and len(s) == len(i) and s:
            ok = [(finite(a), finite(b)) for a, b in zip(s, i)]
            ok = [(a, b) for a, b in ok if a is not None and b is not None]
            return [a for a, _ in ok], [b for _, b in ok]
    return None


def _binned_mean(data: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """Mean IoU per score bin (bin centres), from {"mean_iou_by_score_bin": {"bins", "mean_iou"}}."""
    b = data.get("mean_iou_by_score_bin")
    if not isinstance(b, dict):
        return None
    edges, means = b.get("bins") or [], b.get("mean_iou") or []
    if len(edges) != len(means) + 1:
        return None
    pts = [((edges[i] + edges[i + 1]) / 2, finite(m)) for i, m in enumerate(means)]
    pts = [(x, m) for x, m in pts if m is not None]
    return ([x for x, _ in pts], [m for _, m in pts]) if pts else None


def generic_tables(data: Any, source: str) -> list[Any]:
    """Any JSON as tables: top-level scalars in one table; nested dicts that share their keys
    (e.g. "dap" and "counts" per error type) side by side in one grid; a dict of dicts
    (e.g. per class) as a grid; other nested dicts flattened. Long lists are left out."""
    if not isinstance(data, dict):
        return [] if _long(data) else [Table(["value"], [[data]], caption=source)]
    out: list[Any] = []
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict) and not _long(v)]
    if scalars:
        out.append(Table(["quantity", "value"], scalars, caption=source))
    groups: dict[tuple, list[str]] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            groups.setdefault(tuple(value), []).append(key)
    for keys, names in groups.items():
        if len(names) > 1 and all(_scalar(data[n][k]) for n in names for k in keys):
            out.append(Table([""] + names, [[k] + [data[n][k] for n in names] for k in keys],
                             caption=f"{source}: {', '.join(names)}"))
            continue
        for name in names:
            table = _dict_table(data[name], f"{source}: {name}")
            if table is not None:
                out.append(table)
    return out


def _dict_table(d: dict, caption: str) -> Table | None:
    inner = list(d.values())
    if all(isinstance(v, dict) for v in inner):
        cols = list(dict.fromkeys(k for v in inner for k in v if _scalar(v[k])))
        if cols and len(cols) <= 12:
            return Table([""] + cols, [[k] + [v.get(c) for c in cols] for k, v in d.items()], caption=caption)
    rows = [(k, v) for k, v in flatten(d) if not _long(v)]
    return Table(["quantity", "value"], rows, caption=caption) if rows else None


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (int, float, str, bool))


def _long(v: Any) -> bool:
    return isinstance(v, list) and len(v) > MAX_LIST
