"""The doctor in your own training loop.

Example (runnable; tests/test_doctor_api.py runs exactly this)::

    import torch
    from visiondoctor.doctor import Doctor
    from visiondoctor.doctor.zoo.common import batch, squares, tiny_ssd

    model = tiny_ssd(num_classes=3)                      # any torchvision-style detector
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = batch(squares(4))                  # a few samples of your data

    doc = Doctor(model, optimizer, task="detection", num_classes=3)
    for f in doc.static_checks(images, targets):         # before training: seconds
        print(f.severity, f.id, f.title)

    model.train()
    for step in range(20):                               # your loop, unchanged
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        doc.step(losses)                                 # after backward, before zero_grad
        optimizer.step()

    for f in doc.findings():                             # everything found so far
        print(f.severity, f.id, f.title, f.evidence)
    doc.close()                                          # restores the model's matchers

`doc.step(losses, images, targets)` also runs the periodic output checks on that batch.
With the engine's Trainer, pass `doc.callback` in `callbacks=[...]` instead of calling step().
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from visiondoctor.doctor.checks.amp import autocast_findings
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.hooks import record_autocast
from visiondoctor.doctor.model_io import LossFn
from visiondoctor.doctor.monitor import TrainingMonitor
from visiondoctor.doctor.probe import Observation
from visiondoctor.doctor.runner import dedupe, run_check, sort_findings
from visiondoctor.doctor.static import static_checks


class Doctor:
    """Attach to a model (and optimizer); static checks before training, monitors during it.

    task: "detection" or "segmentation"; num_classes: model outputs the data needs (background
    included for torchvision detectors); loss_fn: for segmentation (or a detector returning raw
    outputs), `loss_fn(outputs, targets) -> loss or {name: loss}`; threshold: the score threshold
    detections are judged at; every: steps between the costly periodic checks."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, task: str = "detection",
                 num_classes: int | None = None, loss_fn: LossFn | None = None, threshold: float = 0.5,
                 every: int = 100, min_steps_for_outputs: int = 100, background_label: bool | None = None,
                 watch_autocast_steps: int = 1) -> None:
        self.model = model
        self.optimizer = optimizer
        self.task = task
        self.num_classes = num_classes
        self.loss_fn = loss_fn
        self.background_label = background_label
        self.monitor = TrainingMonitor(model, every=every, threshold=threshold, min_steps_for_outputs=min_steps_for_outputs,
                                       task=task)
        self.monitor.attach(model)
        self.observation: Observation | None = None
        self._static: list[Finding] = []
        self._step = 0
        # autocast as the user's own loop runs it (e.g. autocast around the head only): recorded during the first steps
        self._autocast_steps = watch_autocast_steps
        self._autocast_stack: contextlib.ExitStack | None = contextlib.ExitStack()
        self._autocast_seen: dict[str, bool] = self._autocast_stack.enter_context(record_autocast(model))
        self._autocast_result: list[Finding] = []

    @property
    def callback(self) -> TrainingMonitor:
        """The monitor as an engine Callback (Trainer(..., callbacks=[doc.callback]))."""
        return self.monitor

    def static_checks(self, images: Any, targets: Any) -> list[Finding]:
        """Data, anchors, heads, gradients, BatchNorm, RoI scale, autocast, optimizer: one probe forward/backward."""
        paused = self._pause_autocast_watch()
        try:
            self._static, self.observation = static_checks(
                self.model, images, targets, task=self.task, num_classes=self.num_classes, loss_fn=self.loss_fn,
                background_label=self.background_label, optimizer=self.optimizer)
        finally:
            self._resume_autocast_watch(paused)
        return list(self._static)

    def step(self, losses: dict[str, torch.Tensor] | torch.Tensor, images: Any = None, targets: Any = None) -> None:
        """Report one training step's losses (call after backward, before zero_grad)."""
        if isinstance(losses, torch.Tensor):
            losses = {"loss": losses}
        self._step += 1
        if self._autocast_stack is not None and self._step >= self._autocast_steps:
            self._close_autocast_watch()
        self.monitor.record(self._step, losses, images=images, targets=targets)
        self.monitor.prepare_step(self._step + 1)

    def findings(self) -> list[Finding]:
        """Static findings, what the monitors found so far, and the autocast coverage of the first step(s)."""
        return sort_findings(dedupe(self._static + self._autocast_result + self.monitor.findings()))

    def close(self) -> None:
        """Remove every hook and wrapper the doctor put on the model."""
        self._close_autocast_watch()
        self.monitor.detach()

    # ----- autocast watch over the user's own first step(s) --------------------------------------
    def _close_autocast_watch(self) -> None:
        if self._autocast_stack is None:
            return
        self._autocast_stack.close()
        self._autocast_stack = None
        if self._autocast_seen:
            self._autocast_result = run_check(autocast_findings, dict(self._autocast_seen))

    def _pause_autocast_watch(self) -> dict[str, bool] | None:
        if self._autocast_stack is None:
            return None
        seen = dict(self._autocast_seen)
        self._autocast_stack.close()
        return seen

    def _resume_autocast_watch(self, seen: dict[str, bool] | None) -> None:
        if seen is None:
            return
        self._autocast_stack = contextlib.ExitStack()
        self._autocast_seen = self._autocast_stack.enter_context(record_autocast(self.model))
        self._autocast_seen.update(seen)
