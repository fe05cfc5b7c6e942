"""The doctor in every `train` run: static and probe checks before training, the training monitor
during it, evaluation checks after it; the result is diagnosis.json / diagnosis.md in the run,
which the report's Diagnosis section reads."""
from __future__ import annotations

import copy
import logging
import time
from typing import Any, Sequence

from torch import nn
from torch.utils.data import Dataset

from visiondoctor.config import Config
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.monitor import TrainingMonitor
from visiondoctor.doctor.runner import check_failed, dedupe, sort_findings
from visiondoctor.rundir import RunDir

log = logging.getLogger(__name__)
PROBE_BATCH = 8


class RunDiagnosis:
    """Collects the findings of one run. `monitor` is the Callback to give the Trainer (None when
    `train.monitors` is off)."""

    def __init__(self, model: nn.Module, cfg: Config, num_classes: int, background_label: bool):
        self.cfg = cfg
        self.num_classes = num_classes
        self.background_label = background_label
        self.findings: list[Finding] = []
        self.timings: dict[str, float] = {}
        self.monitor = (TrainingMonitor(model=model, every=100, threshold=cfg.eval.display_threshold, task=cfg.task)
                        if cfg.train.monitors else None)

    def before_training(self, model: nn.Module, probe_set: Dataset, collate: Any, extra: Sequence[Finding] = ()) -> None:
        """Probe a copy of the model on a few un-augmented samples, so training starts untouched."""
        from visiondoctor.doctor.static import static_checks

        started = time.perf_counter()
        self.findings += list(extra)  # whole-split evidence first: dedupe keeps the first of an ID
        try:
            images, targets = collate([probe_set[i] for i in range(min(PROBE_BATCH, len(probe_set)))])
            found, _ = static_checks(copy.deepcopy(model), images, targets, task=self.cfg.task,
                                     num_classes=self.num_classes, background_label=self.background_label)
            self.findings += found
        except Exception as exc:  # a failing check never stops the run
            self.findings.append(check_failed("static_checks", exc))
        self.timings["static_s"] = round(time.perf_counter() - started, 2)
        for f in self.findings:
            if f.severity != "info":
                log.warning("doctor [%s] %s: %s", f.severity, f.id, f.title)

    def after_evaluation(self, run: RunDir, metric_key: str) -> list[dict[str, Any]]:
        """Add the monitor's and the evaluation checks' findings; write diagnosis.json and .md."""
        from visiondoctor.doctor.diagnose import write_diagnosis
        from visiondoctor.doctor.from_run import run_findings

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


def data_findings(index: Any, category_map: Any, background_label: bool) -> list[Finding]:
    """The doctor's data checks on the whole training split (box format and range, labels, empty or
    dominant categories, tiny boxes)."""
    from visiondoctor.doctor.checks.data import check_index

    try:
        return check_index(index, category_map, background_label)
    except Exception as exc:
        return [check_failed("data.check_index", exc)]
