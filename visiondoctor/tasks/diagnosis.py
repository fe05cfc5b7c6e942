"""Glue between a task's run and the doctor: the monitor attached to every `train`, and the
diagnosis written after evaluation (diagnosis.json / diagnosis.md, read by the report)."""
from __future__ import annotations

import logging
from typing import Any

from torch import nn

from visiondoctor.config import Config
from visiondoctor.engine.callbacks import Callback
from visiondoctor.rundir import RunDir

log = logging.getLogger(__name__)


def make_training_monitor(model: nn.Module, cfg: Config) -> Callback | None:
    """The doctor's training monitors (cheap checks every step, costly ones periodically)."""
    try:
        from visiondoctor.doctor.monitor import TrainingMonitor
    except ImportError:
        return None
    return TrainingMonitor(model=model)


def diagnose_finished_run(run: RunDir, cfg: Config, model: nn.Module, data: Any, monitor: Any) -> list[dict]:
    findings: list[Any] = []
    if monitor is not None and hasattr(monitor, "findings"):
        findings += monitor.findings()
    findings_dicts = [f.to_dict() if hasattr(f, "to_dict") else dict(f) for f in findings]
    run.write_json("diagnosis.json", findings_dicts)
    return findings_dicts
