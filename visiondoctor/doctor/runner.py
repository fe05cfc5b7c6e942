"""Run checks so that one failing check never stops the others.

`sort_findings` (errors first) is the shared one of visiondoctor.findings, re-exported here."""
from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from typing import Any

from visiondoctor.findings import SEVERITY_ORDER, Finding, sort_findings

__all__ = ["check_failed", "run_check", "run_checks", "dedupe", "sort_findings"]

Check = Callable[..., list[Finding]]


def check_failed(name: str, exc: BaseException) -> Finding:
    """The info finding that stands in for a check that raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    last = tb[-1] if tb else None
    return Finding(
        id="check.failed",
        severity="info",
        title=f"The check {name} could not run: {type(exc).__name__}: {exc}",
        evidence={"check": name, "exception": type(exc).__name__, "message": str(exc)[:500],
                  "at": f"{last.filename}:{last.lineno}" if last else ""},
        cause="The check raised internally (often a model that departs from the conventions it expects).",
        fix="Nothing to fix in your training; the other checks ran. Report it if the model follows torchvision conventions.",
        where=name,
    )


def run_check(check: Check, *args: Any, **kwargs: Any) -> list[Finding]:
    name = getattr(check, "__qualname__", repr(check))
    module = getattr(check, "__module__", "")
    full = f"{module.rsplit('.', 1)[-1]}.{name}" if module else name
    try:
        out = check(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 — the whole point: a failing check is a finding, not a crash
        return [check_failed(full, exc)]
    if out is None:
        return []
    return list(out)


def run_checks(checks: Iterable[Check], *args: Any, **kwargs: Any) -> list[Finding]:
    """Call every check with the same arguments; a check that raises becomes a `check.failed` info finding."""
    findings: list[Finding] = []
    for check in checks:
        findings.extend(run_check(check, *args, **kwargs))
    return findings


def dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """Keep the most severe finding per (id, where); the first wins among equals."""
    best: dict[tuple[str, str], Finding] = {}
    order: list[tuple[str, str]] = []
    for f in findings:
        key = (f.id, f.where)
        if key not in best:
            order.append(key)
            best[key] = f
        elif SEVERITY_ORDER[f.severity] < SEVERITY_ORDER[best[key].severity]:
            best[key] = f
    return [best[k] for k in order]
