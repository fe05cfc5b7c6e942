"""How numbers and findings are written, the same in report.html and diagnosis.md."""
from __future__ import annotations

import math
from typing import Any

MAX_LIST_ITEMS = 8


def fmt(value: Any) -> str:
    """A number with 4 significant digits (integers exact); lists shortened; others as text."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ") if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == int(value) and abs(value) < 1e6:
            return str(int(value))
        if 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(fmt(v) for v in value[:MAX_LIST_ITEMS])
        more = f", … ({len(value)} in all)" if len(value) > MAX_LIST_ITEMS else ""
        return f"[{shown}{more}]"
    return str(value)


def count(n: int, noun: str, plural: str = "") -> str:
    """"1 error", "2 errors"."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def flatten(evidence: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested evidence as (dotted key, value) rows, in the producer's order."""
    rows: list[tuple[str, Any]] = []
    for key, value in evidence.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def plot_reference(finding: dict[str, Any]) -> str | None:
    """The run-dir relative PNG a finding points at (evidence["plot"]), if any."""
    evidence = finding.get("evidence") or {}
    plot = evidence.get("plot") if isinstance(evidence, dict) else None
    return plot if isinstance(plot, str) and plot.lower().endswith(".png") else None


def evidence_rows(finding: dict[str, Any]) -> list[tuple[str, Any]]:
    """Evidence rows without the plot reference (which is shown as a picture)."""
    evidence = finding.get("evidence") or {}
    if not isinstance(evidence, dict):
        return [("evidence", evidence)]
    return [(k, v) for k, v in flatten(evidence) if k != "plot"]
