"""The doctor: static/probe checks, training monitors and evaluation checks that name the root cause
of a failing detection or segmentation training run, with the evidence and the fix.

Public API (imported lazily so `import visiondoctor.doctor` stays light):
    Doctor            attach to your own loop (visiondoctor.doctor.api)
    TrainingMonitor   the engine Callback (visiondoctor.doctor.monitor)
    diagnose          static checks + monitored training + overfit probe + evaluation (visiondoctor.doctor.diagnose)
    Finding, CATALOGUE
"""
from __future__ import annotations

from typing import Any

from visiondoctor.doctor.findings import CATALOGUE, Finding

_LAZY = {
    "Doctor": "visiondoctor.doctor.api",
    "TrainingMonitor": "visiondoctor.doctor.monitor",
    "diagnose": "visiondoctor.doctor.diagnose",
    "diagnose_cli": "visiondoctor.doctor.diagnose",
    "load_factory": "visiondoctor.doctor.diagnose",
    "static_checks": "visiondoctor.doctor.static",
    "run_checks": "visiondoctor.doctor.runner",
    "overfit_one_batch": "visiondoctor.doctor.overfit",
}

__all__ = ["CATALOGUE", "Finding", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'visiondoctor.doctor' has no attribute {name!r}")
