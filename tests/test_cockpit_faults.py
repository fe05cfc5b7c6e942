"""A fault injected mid-run is shown while the run trains: the demo preset, shrunk to a few dozen
steps, gets NaN weights in its classification head at step 20 from a test callback; the doctor's
finding must be logged at the next step (not only in diagnosis.json after the run), and with
`train.stop_on=error` the run must stop there and still write its diagnosis and report."""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from visiondoctor.api import train
from visiondoctor.engine.callbacks import Callback, TrainState

FAULT_STEP = 20
STEPS_PER_EPOCH = 8  # 16 training images in batches of 2
EPOCHS = 4
SCHEDULED_STEPS = STEPS_PER_EPOCH * EPOCHS
# The demo preset at test size: its model, recipe and synthetic shapes, on 16 small images (at 160 px
# input, where its priors raise no error before training, which stop_on=error would stop at).
TINY_DEMO = ["data.synth_images=16", "data.synth_options={num_val: 4, num_test: 2, image_size: 96, max_size: 48}",
             "model.image_size=160", f"train.epochs={EPOCHS}", "train.batch_size=2", "train.warmup_steps=2",
             "train.eval_every=1", "train.log_every=4", "train.device=cpu"]


class NaNHead(Callback):
    """The fault: after optimizer step `at`, the classification head's weights become NaN (as an
    overflow would leave them), so every later loss is NaN. Also tells the log which step it is."""

    def __init__(self, at: int = FAULT_STEP):
        self.at = at
        self.state: TrainState | None = None  # while the loop runs

    @property
    def step(self) -> int | None:
        """The training step now (optimizer steps done), None outside the training loop."""
        return self.state.step if self.state is not None else None

    def on_train_start(self, state: TrainState) -> None:
        self.state = state

    def after_step(self, state: TrainState) -> None:
        if state.step == self.at:
            with torch.no_grad():
                for name, p in state.model.named_parameters():
                    if name.startswith("head.classification_head"):
                        p.fill_(math.nan)

    def on_train_end(self, state: TrainState) -> None:
        self.state = None


class ConsoleLines(logging.Handler):
    """Every line the run logs, with the training step it was logged at (None: outside the loop)."""

    def __init__(self, clock: NaNHead):
        super().__init__(logging.INFO)
        self.clock = clock
        self.lines: list[tuple[int | None, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((self.clock.step, record.getMessage()))


@contextmanager
def console_lines(clock: NaNHead) -> Iterator[ConsoleLines]:
    logger = logging.getLogger("visiondoctor")
    handler, level = ConsoleLines(clock), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _train(tmp_path: Path, name: str, *extra: str) -> tuple[Path, list[tuple[int | None, str]]]:
    fault = NaNHead()
    with console_lines(fault) as log:
        run = train(config="demo", overrides=[*TINY_DEMO, f"output_dir={tmp_path}", f"name={name}", *extra],
                    callbacks=[fault])
    return run.path, log.lines


def _doctor_lines(lines: list[tuple[int | None, str]], finding: str) -> list[tuple[int | None, str]]:
    return [(step, text) for step, text in lines if text.startswith("doctor [") and finding in text]


@pytest.mark.slow
def test_a_fault_at_step_20_is_printed_at_once_while_the_run_goes_on(tmp_path):
    run, lines = _train(tmp_path, "fault")
    result = json.loads((run / "train_result.json").read_text())
    assert result["steps"] == SCHEDULED_STEPS and result["stopped_by"] == "epochs"  # stop_on defaults to never
    found = _doctor_lines(lines, "loss.nonfinite")
    assert found, [t for _, t in lines]
    # logged in the loop, at the first step whose loss is NaN, long before the run's last step
    step, text = found[0]
    assert step == FAULT_STEP + 1 and f"at step {FAULT_STEP + 1}" in text and "[error]" in text
    # each evaluation's mAP as it is measured, and the time remaining on the step lines
    evals = [(s, t) for s, t in lines if t.startswith("eval ")]
    assert len(evals) == EPOCHS and all("mAP@[.5:.95]" in t for _, t in evals)
    assert [s for s, _ in evals] == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    assert any(t.startswith("step ") and " left" in t for s, t in lines if s is not None and s < FAULT_STEP)
    assert lines.index(found[0]) < lines.index(evals[-1])
    # the finding is in the diagnosis too
    assert "loss.nonfinite" in {f["id"] for f in json.loads((run / "diagnosis.json").read_text())}


@pytest.mark.slow
def test_stop_on_error_ends_the_run_at_the_fault_and_still_writes_diagnosis_and_report(tmp_path):
    run, lines = _train(tmp_path, "stopped", "train.stop_on=error")
    result = json.loads((run / "train_result.json").read_text())
    assert result["steps"] == FAULT_STEP + 1 < SCHEDULED_STEPS
    assert result["stopped_by"].startswith("callback: doctor: loss.nonfinite")
    found = _doctor_lines(lines, "loss.nonfinite")
    assert found and found[0][0] == FAULT_STEP + 1
    assert any(t.startswith(f"stopping at step {FAULT_STEP + 1}: doctor: loss.nonfinite") for _, t in lines)
    diagnosis = json.loads((run / "diagnosis.json").read_text())
    assert any(f["id"] == "loss.nonfinite" and f["severity"] == "error" for f in diagnosis)
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "loss.nonfinite" in html
