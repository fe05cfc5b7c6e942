"""diagnosis.md: the doctor's findings written as an analysis — root cause first, then the
evidence (numbers, a plot where one helps), then what to do."""
from __future__ import annotations

from typing import Any, Sequence

from visiondoctor.findings import severity_counts, sort_findings
from visiondoctor.report.formatting import evidence_rows, fmt, plot_reference

HEADINGS = {"error": "Root cause", "warning": "Warnings", "info": "Notes"}


def diagnosis_markdown(findings: Sequence[dict[str, Any]], title: str) -> str:
    """Markdown for diagnosis.md. Findings are dicts as in diagnosis.json (Finding.to_dict())."""
    findings = sort_findings(f for f in findings if isinstance(f, dict))
    counts = severity_counts(findings)
    out = [f"# {_inline(title)}", ""]
    if not findings:
        out += ["The doctor ran its checks and found nothing to report.", ""]
        return "\n".join(out)
    out += [_verdict(findings, counts), ""]
    number = 0
    for severity in ("error", "warning", "info"):
        group = [f for f in findings if f.get("severity", "info") == severity]
        if not group:
            continue
        heading = HEADINGS[severity]
        if severity == "error" and len(group) > 1:
            heading = "Root causes"
        out += [f"## {heading}", ""]
        for f in group:
            number += 1
            out += _finding(number, f)
    other = [f for f in findings if f.get("severity") not in HEADINGS]
    for f in other:
        number += 1
        out += _finding(number, f)
    return "\n".join(out).rstrip() + "\n"


def findings_table(findings: Sequence[dict[str, Any]]) -> str:
    """The findings as one Markdown table (severity, ID, title), errors first: a summary where the
    whole analysis does not fit (TensorBoard's text tab)."""
    findings = sort_findings(f for f in findings if isinstance(f, dict))
    if not findings:
        return "The doctor ran its checks and found nothing to report."
    rows = [f"| {_cell(f.get('severity', 'info'))} | `{_code(f.get('id', 'n/a'))}` | {_cell(f.get('title', ''))} |"
            for f in findings]
    return "\n".join(["| severity | id | title |", "|---|---|---|", *rows])


def _verdict(findings: list[dict[str, Any]], counts: dict[str, int]) -> str:
    parts = [f"{counts[s]} {s}{'s' if counts[s] != 1 and s != 'info' else ''}" for s in ("error", "warning", "info") if counts[s]]
    line = f"**{len(findings)} finding{'s' if len(findings) != 1 else ''}** ({', '.join(parts)})."
    first = findings[0]
    if first.get("severity") == "error":
        line += f" The root cause is **{_inline(first.get('title', first.get('id', '')))}**"
        line += f": {_inline(first['cause'])}" if first.get("cause") else "."
        if not line.endswith("."):
            line += "."
        line += " Fix it first; the findings after it may be its symptoms."
    elif first.get("severity") == "warning":
        line += " No error-level cause was found; the warnings below are worth checking in order."
    else:
        line += " Nothing blocks training; the notes below are for information."
    return line


def _finding(number: int, f: dict[str, Any]) -> list[str]:
    sev = str(f.get("severity", "info"))
    out = [f"### {number}. {_inline(f.get('title') or f.get('id', 'finding'))} ({sev}, `{_code(f.get('id', 'n/a'))}`)", ""]
    if f.get("cause"):
        out += [f"**Cause.** {_inline(f['cause'])}", ""]
    rows = evidence_rows(f)
    if rows:
        out += ["**Evidence.**", "", "| measurement | value |", "|---|---|"]
        out += [f"| {_cell(k)} | {_cell(fmt(v))} |" for k, v in rows]
        out.append("")
    plot = plot_reference(f)
    if plot:
        out += [f"![{_inline(f.get('title', plot))}]({plot})", ""]
    if f.get("fix"):
        out += [f"**Fix.** {_inline(f['fix'])}", ""]
    if f.get("where"):
        out += [f"**Where.** `{_code(f['where'])}`", ""]
    return out


def _inline(text: Any) -> str:
    """One line of text: newlines folded so a finding's text cannot break the layout, and
    angle brackets escaped so a data string is never read as HTML by a Markdown viewer."""
    return " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: Any) -> str:
    return _inline(text).replace("|", "\\|")


def _code(text: Any) -> str:
    return " ".join(str(text).split()).replace("`", "'")  # code spans show text literally
