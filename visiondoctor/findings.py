"""Findings: what the doctor reports. A contract every layer shares (the doctor writes them, the
report and the CLI show them, diagnosis.json stores them as dicts), so it sits at the bottom."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar, Union

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass
class Finding:
    """One diagnosis: root cause first, then evidence (numbers), then the fix."""

    id: str  # stable dotted ID from the doctor's catalogue
    severity: Severity
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    cause: str = ""
    fix: str = ""
    where: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Finding":
        return cls(**{k: d[k] for k in ("id", "severity", "title", "evidence", "cause", "fix", "where") if k in d})


FindingLike = TypeVar("FindingLike", bound=Union[Finding, dict])


def severity_of(finding: Finding | dict[str, Any]) -> str:
    return str(finding.get("severity", "info")) if isinstance(finding, dict) else finding.severity


def sort_findings(findings: Iterable[FindingLike]) -> list[FindingLike]:
    """Root cause first: errors, then warnings, then info; the producer's order within each.
    Works on Finding objects and on their dicts (as diagnosis.json holds them)."""
    return sorted(findings, key=lambda f: SEVERITY_ORDER.get(severity_of(f), 3))


def severity_counts(findings: Iterable[Finding | dict[str, Any]]) -> dict[str, int]:
    counts = {"error": 0, "warning": 0, "info": 0}
    for f in findings:
        sev = severity_of(f)
        counts[sev] = counts.get(sev, 0) + 1
    return counts
