"""ZooCase and the registry of cases."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.runner import check_failed
from visiondoctor.registry import Registry


@dataclass(frozen=True)
class ZooCase:
    name: str
    seed: str  # the seed post-mortem it reproduces ("000".."004"), or "" for issue-listed failures
    bug: str  # the broken version, in one line
    twin: str  # what the healthy twin does instead
    expected_id: str
    run: Callable[[bool], list[Finding]]  # run(healthy) -> findings


@dataclass
class ZooOutcome:
    case: ZooCase
    broken: list[Finding]
    healthy: list[Finding]
    seconds: float

    @property
    def detected(self) -> Finding | None:
        """The expected finding on the broken version at error or warning, if raised."""
        return next((f for f in self.broken if f.id == self.case.expected_id and f.severity in ("error", "warning")), None)

    @property
    def twin_errors(self) -> list[Finding]:
        return [f for f in self.healthy if f.severity == "error"]

    @property
    def twin_expected(self) -> list[Finding]:
        """The expected ID raised on the healthy twin at error or warning (a false alarm for this case)."""
        return [f for f in self.healthy if f.id == self.case.expected_id and f.severity in ("error", "warning")]


# Cases register themselves in their own module of the zoo package (found by the registry).
ZOO: Registry[ZooCase] = Registry("zoo case", "visiondoctor.doctor.zoo")


def register(case: ZooCase) -> ZooCase:
    return ZOO.add(case.name, case)


def run_case(name: str, healthy: bool = False) -> list[Finding]:
    """The findings of one version of a case; an exception becomes a check.failed finding."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo case {name!r}; available: {', '.join(sorted(ZOO.names()))}")
    try:
        return ZOO[name].run(healthy)
    except Exception as exc:  # noqa: BLE001
        return [check_failed(f"zoo.{name}", exc)]


def evaluate_case(name: str) -> ZooOutcome:
    start = time.perf_counter()
    broken = run_case(name, healthy=False)
    healthy = run_case(name, healthy=True)
    return ZooOutcome(ZOO[name], broken, healthy, time.perf_counter() - start)

