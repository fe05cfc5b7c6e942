"""Checks as plug-ins: a check declares where it runs and which findings it raises, where it is defined.

    @check("probe", findings=[FindingDoc("anchors.coverage", summary=..., signal=..., needs=...)])
    def check_anchor_coverage(model, obs): ...

A stage (see STAGES) calls `run_stage(stage, **context)`: every check registered for it receives
the context values its parameters name (pytest-fixture style), so a check states its inputs in its
signature and nothing else needs editing; a check whose required inputs are absent (None) at that
stage is skipped. Every module of this package is found by the registry, so adding a check is one
function (in a new or existing module here) and its test or zoo case. The catalogue of finding IDs
(`visiondoctor.doctor.findings.CATALOGUE`) and the table in docs/doctor.md are generated from the
declarations (`python -m visiondoctor.doctor.catalogue`).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from visiondoctor.doctor.runner import run_check
from visiondoctor.findings import Finding
from visiondoctor.registry import Registry

# stage -> what its context holds (the names a check's parameters may use)
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "data": ("the dataset before training (no model): the training split, every split's image files",
             ("index", "category_map", "background_label", "split_images")),
    "probe": ("probe forwards of the model on a few training samples, before training",
              ("model", "obs", "io", "images", "targets", "image_sizes", "num_classes", "background_label",
               "optimizer", "min_size", "task", "lr_range", "overfit")),
    "monitor": ("what the training monitor recorded while the run trained",
                ("loss_history", "total_history", "steps", "window", "grad_history", "grad_steps", "matches",
                 "match_step", "stats", "nonfinite", "nonfinite_grad_steps")),
    "evaluation": ("the model's outputs on evaluation images after training (diagnose)",
                   ("stats", "consistency", "tide", "metrics", "history", "metric_key", "task")),
    "run": ("the files a finished run wrote (metrics.json, history.csv, consistency.json, ...)",
            ("metrics", "history", "metric_key", "consistency", "tide", "detection_stats")),
}


@dataclass(frozen=True)
class FindingDoc:
    """A documented finding ID: one line for the catalogue, the signal it measures, what it needs
    from the model (the contract alone, or more), and how severity is decided."""

    id: str
    summary: str
    signal: str
    needs: str = "the contract only"
    severity: str = ""
    stage: str = ""  # for IDs raised outside a registered check: where they are raised


@dataclass(frozen=True)
class CheckSpec:
    name: str
    stages: tuple[str, ...]
    fn: Callable[..., list[Finding]]
    finding_ids: tuple[str, ...]
    order: int
    required: tuple[str, ...]
    optional: tuple[str, ...]


CHECKS: Registry[CheckSpec] = Registry("doctor check", "visiondoctor.doctor.checks")
FINDING_DOCS: dict[str, FindingDoc] = {}


def declare(*docs: FindingDoc) -> None:
    """Document finding IDs (those a check raises, or those raised outside a check)."""
    for doc in docs:
        if doc.id in FINDING_DOCS and FINDING_DOCS[doc.id] != doc:
            raise ValueError(f"finding {doc.id!r} documented twice, differently")
        FINDING_DOCS[doc.id] = doc


def check(*stages: str, findings: Sequence[FindingDoc | str], order: int = 50,
          name: str | None = None) -> Callable[[Callable[..., list[Finding]]], Callable[..., list[Finding]]]:
    """Register a check for `stages`; `findings`: the IDs it raises (a FindingDoc documents an ID,
    a string refers to one documented elsewhere). `order` sorts checks within a stage."""
    for stage in stages:
        if stage not in STAGES:
            raise ValueError(f"unknown doctor stage {stage!r}; stages: {', '.join(STAGES)}")

    def wrap(fn: Callable[..., list[Finding]]) -> Callable[..., list[Finding]]:
        params = inspect.signature(fn).parameters.values()
        required = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
        optional = tuple(p.name for p in params if p.default is not inspect.Parameter.empty)
        for stage in stages:
            unknown = [p for p in required if p not in STAGES[stage][1]]
            if unknown:
                raise TypeError(f"check {fn.__qualname__}: stage {stage!r} provides no {unknown}")
        declare(*(f for f in findings if isinstance(f, FindingDoc)))
        ids = tuple(f.id if isinstance(f, FindingDoc) else f for f in findings)
        check_name = name or f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
        CHECKS.add(check_name, CheckSpec(check_name, tuple(stages), fn, ids, order, required, optional))
        return fn

    return wrap


declare(FindingDoc(
    "check.failed", "a check raised internally; it is reported instead of stopping the run",
    "the exception a check's own code raised (not the model's: a model that raises in a probe is a finding "
    "of its own), with the check's name", severity="info", stage="any"))


def checks_for(stage: str) -> list[CheckSpec]:
    specs = [c for c in CHECKS.values() if stage in c.stages]
    return sorted(specs, key=lambda c: c.order)  # stable: registration order among equals


def run_stage(stage: str, **context: Any) -> list[Finding]:
    """Every check of `stage` on the context; a check that raises becomes a `check.failed` finding,
    a check whose required inputs are None is skipped."""
    if stage not in STAGES:
        raise ValueError(f"unknown doctor stage {stage!r}")
    unknown = set(context) - set(STAGES[stage][1])
    if unknown:
        raise TypeError(f"stage {stage!r} has no context values {sorted(unknown)}")
    findings: list[Finding] = []
    for spec in checks_for(stage):
        if any(context.get(p) is None for p in spec.required):
            continue
        kwargs = {p: context[p] for p in (*spec.required, *spec.optional) if context.get(p) is not None}
        findings += run_check(spec.fn, **kwargs)
    return findings


def documented_ids() -> dict[str, FindingDoc]:
    CHECKS.discover()
    return dict(FINDING_DOCS)


def stages_of(finding_id: str) -> list[str]:
    """The stages whose checks raise `finding_id` (empty for IDs raised outside a registered check)."""
    return [s for s in STAGES if any(finding_id in c.finding_ids for c in checks_for(s))]


def ids_raised_at(stages: Iterable[str]) -> set[str]:
    wanted = set(stages)
    return {i for c in CHECKS.values() if wanted & set(c.stages) for i in c.finding_ids}
