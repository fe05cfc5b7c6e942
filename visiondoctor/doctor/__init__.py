"""The doctor: static/probe checks, training monitors and evaluation checks that name the root cause
of a failing detection or segmentation training run, with the evidence and the fix.

Public API:
    Doctor            attach to your own loop (visiondoctor.doctor.api)
    TrainingMonitor   the engine Callback (visiondoctor.doctor.monitor)
    diagnose          static checks + monitored training + overfit probe + evaluation (visiondoctor.doctor.diagnose)
    static_checks     the probe stage alone (visiondoctor.doctor.static)
    Finding, CATALOGUE
Checks are plug-ins of visiondoctor.doctor.checks.
"""
from __future__ import annotations

from visiondoctor.doctor.api import Doctor
from visiondoctor.doctor.diagnose import diagnose, load_factory
from visiondoctor.doctor.findings import CATALOGUE, Finding
from visiondoctor.doctor.monitor import TrainingMonitor
from visiondoctor.doctor.overfit import overfit_one_batch
from visiondoctor.doctor.runner import run_checks
from visiondoctor.doctor.static import static_checks

__all__ = ["CATALOGUE", "Doctor", "Finding", "TrainingMonitor", "diagnose", "load_factory", "overfit_one_batch",
           "run_checks", "static_checks"]
