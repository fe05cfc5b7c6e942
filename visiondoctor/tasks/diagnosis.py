"""The doctor in every run: data and probe checks before training, the training monitor during it,
run-file checks after the evaluation; the result is diagnosis.json / diagnosis.md in the run,
which the report's Diagnosis section reads."""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from visiondoctor.config import Config
from visiondoctor.doctor.checks import STAGES, ids_raised_at, run_stage
from visiondoctor.doctor.checks.gradients import check_optimizer
from visiondoctor.doctor.checks.outputs import DOCTOR_THRESHOLD
from visiondoctor.doctor.diagnosis_file import read_diagnosis, write_diagnosis
from visiondoctor.doctor.from_run import run_findings
from visiondoctor.doctor.monitor import TrainingMonitor
from visiondoctor.doctor.runner import check_failed, dedupe, run_check, sort_findings
from visiondoctor.doctor.static import static_checks
from visiondoctor.engine.callbacks import Callback, TrainState
from visiondoctor.findings import Finding
from visiondoctor.rundir import RunDir

log = logging.getLogger(__name__)
PROBE_BATCH = 8


def redone_at_evaluation(finding_id: str) -> bool:
    """Findings that only the run-file checks raise: an evaluation (of any split) redoes them, while the
    findings of the data, probe and monitor stages of the training stay."""
    training = ids_raised_at(s for s in STAGES if s not in ("run", "evaluation"))
    return finding_id in ids_raised_at(["run"]) - training


class DoctorOnTheRun(Callback):
    """The doctor inside the Trainer: checks the optimizer the run really uses when training starts, prints each
    finding the moment it is raised (before-training ones at the start, the monitor's as it measures them), and stops
    a run the doctor judged unable to succeed when `train.stop_on` asks (error | warning)."""

    def __init__(self, diagnosis: "RunDiagnosis") -> None:
        self.diagnosis = diagnosis
        self.reported: set[tuple[str, str]] = set()
        self.monitor_raised = 0  # the monitor's per-step findings seen so far

    def on_train_start(self, state: TrainState) -> None:
        self.diagnosis.findings += run_check(check_optimizer, state.model, state.optimizer)
        self._announce(self.diagnosis.findings, state)

    def after_step(self, state: TrainState) -> None:
        """The monitor's judgement every `monitor.every` steps, and at once on a step where its per-step checks
        raised something (a NaN loss at step 20 is printed at step 20, not at step 100 or after the run)."""
        monitor = self.diagnosis.monitor
        if monitor is None:
            return
        raised = monitor.raised
        if state.step % monitor.every == 0 or raised > self.monitor_raised:
            self.monitor_raised = raised
            self._announce(monitor.findings(), state)

    def _announce(self, findings: Sequence[Finding], state: TrainState) -> None:
        stop_on = STOP_LEVELS.get(self.diagnosis.cfg.train.stop_on, ())
        for f in findings:
            key = (f.id, f.where)
            if f.severity == "info" or key in self.reported:
                continue
            self.reported.add(key)
            log.warning("doctor [%s] %s at step %d: %s", f.severity, f.id, state.step, f.title)
            if f.severity in stop_on and not state.stop:
                state.request_stop(f"doctor: {f.id}: {f.title}")


STOP_LEVELS = {"error": ("error",), "warning": ("error", "warning"), "never": ()}


class RunDiagnosis:
    """Collects the findings of one run. `callbacks` go to the Trainer: the monitor (when `train.monitors` is on)
    and the doctor's console/stop callback."""

    def __init__(self, model: nn.Module, cfg: Config, num_classes: int, background_label: bool, ignore_index: int = 255):
        self.cfg = cfg
        self.num_classes = num_classes
        self.background_label = background_label
        self.ignore_index = ignore_index
        self.findings: list[Finding] = []
        self.timings: dict[str, float] = {}
        self.monitor = (TrainingMonitor(model=model, every=100, threshold=DOCTOR_THRESHOLD, task=cfg.task)
                        if cfg.train.monitors else None)

    @property
    def callbacks(self) -> list[Callback]:
        return [*([self.monitor] if self.monitor is not None else []), DoctorOnTheRun(self)]

    def before_training(self, model: nn.Module, probe_set: Dataset, collate: Callable, extra: Sequence[Finding] = ()) -> None:
        """Probe a copy of the model on a few un-augmented samples, so training starts untouched."""
        started = time.perf_counter()
        self.findings += list(extra)  # whole-split evidence first: dedupe keeps the first of an ID
        try:
            images, targets = collate([probe_set[i] for i in range(min(PROBE_BATCH, len(probe_set)))])
            found, _ = static_checks(copy.deepcopy(model), images, targets, task=self.cfg.task,
                                     num_classes=self.num_classes, background_label=self.background_label,
                                     ignore_index=self.ignore_index)
            self.findings += found
        except Exception as exc:  # a failing check never stops the run
            self.findings.append(check_failed("static_checks", exc))
        self.timings["static_s"] = round(time.perf_counter() - started, 2)

    def keep_training_findings(self, run: RunDir) -> None:
        """Start from the findings a run's training wrote (before a re-evaluation redoes the rest)."""
        self.findings = [Finding.from_dict(f) for f in read_diagnosis(run.path)
                         if not redone_at_evaluation(str(f.get("id", "")))]

    def after_evaluation(self, run: RunDir, metric_key: str) -> list[dict[str, Any]]:
        """Add the monitor's and the run-file checks' findings; write diagnosis.json and .md."""
        findings = list(self.findings)
        if self.monitor is not None:
            findings += self.monitor.findings()
        try:
            findings += run_findings(run.path, metric_key)
        except Exception as exc:
            findings.append(check_failed("from_run.run_findings", exc))
        result = sort_findings(dedupe(findings))
        write_diagnosis(result, run.path, f"Diagnosis of {run.path.name}")
        return [f.to_dict() for f in result]


def data_findings(**context: Any) -> list[Finding]:
    """The doctor's data-stage checks on what `context` holds (STAGES["data"]: the training split's index
    and label map, every split's images): box format and range, labels, empty or dominant categories, tiny
    boxes, images shared across splits."""
    return run_stage("data", **context)
