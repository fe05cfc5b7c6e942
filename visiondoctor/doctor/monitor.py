"""The doctor's training monitor: a Callback for the engine's Trainer, also driven by `Doctor.step`
from a user's own loop.

Every step (cheap): the loss components (non-finite: which one, which step) and the gradient
norm of each top-level module (non-finite, exploding, vanishing). The values are read in one
device sync per step. Every `every` steps (costly, still one extra eval forward): the matchers'
positives and their IoU (recorded during that step's forward), and the detector's outputs on
the current batch (foreground-score distribution vs the threshold, box deltas vs the coder's
range). `findings()` turns what was recorded into Findings at any time.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from visiondoctor.doctor.checks import losses as loss_checks
from visiondoctor.doctor.checks import outputs as output_checks
from visiondoctor.doctor.checks import run_stage
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.hooks import MatchRecorder, MatchStats
from visiondoctor.doctor.runner import check_failed, dedupe, sort_findings
from visiondoctor.engine.callbacks import Callback, TrainState


def infer_task(targets: Any) -> str:
    """Detection targets are dicts with boxes; anything else (mask tensors) is segmentation."""
    first = targets[0] if isinstance(targets, (list, tuple)) and targets else targets
    return "detection" if isinstance(first, Mapping) and "boxes" in first else "segmentation"


class TrainingMonitor(Callback):
    """Watches a training run. `every`: steps between costly checks; `threshold`: the score threshold
    detections are judged at; `window`: steps for loss-trend and balance statistics; `min_steps_for_outputs`:
    output checks judge a trained model, so they start after this many steps; `task`: "detection" or
    "segmentation" (inferred from the first batch's targets when None)."""

    def __init__(self, model: nn.Module | None = None, every: int = 100, threshold: float = 0.5, window: int = 50,
                 min_steps_for_outputs: int = 100, task: str | None = None) -> None:
        self.model = model
        self.every = max(1, every)
        self.threshold = threshold
        self.window = window
        self.min_steps_for_outputs = min_steps_for_outputs
        self.task = task
        self.steps: list[int] = []
        self.loss_history: dict[str, list[float]] = {}
        self.total_history: list[float] = []
        self.grad_history: dict[str, list[float]] = {}
        self.grad_steps: list[int] = []
        self.matches: dict[str, list[MatchStats]] = {}
        self.match_steps: list[int] = []
        self.output_stats: list[output_checks.OutputStats] = []
        self._nonfinite: list[Finding] = []
        self._nonfinite_seen: set[str] = set()
        self._nonfinite_grad_steps = 0
        self._groups: dict[str, list[nn.Parameter]] = {}
        self._recorder: MatchRecorder | None = None
        self._errors: list[Finding] = []

    # ----- set-up ------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Group trainable parameters by top-level module and wrap the model's matchers (recording off)."""
        self.model = model
        self._groups = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                self._groups.setdefault(name.split(".")[0], []).append(p)
        if self.task != "segmentation" and self._recorder is None:
            recorder = MatchRecorder(model).install()
            self._recorder = recorder if recorder.installed else None

    def detach(self) -> None:
        """Give the model its original matchers back."""
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None

    def _periodic(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    def prepare_step(self, step: int) -> None:
        """Before the forward of step `step`: record the matchers' decisions if it is a periodic step."""
        if self._recorder is not None:
            self._recorder.active = self._periodic(step)

    # ----- Callback hooks ----------------------------------------------------------------------
    def on_train_start(self, state: TrainState) -> None:
        self.attach(self.model if self.model is not None else state.model)

    def before_step(self, state: TrainState) -> None:
        self.prepare_step(state.step + 1)  # the Trainer increments state.step after the optimizer step

    def after_step(self, state: TrainState) -> None:
        # state.step was already incremented; the losses and gradients are those of step `state.step`
        self.record(state.step, state.losses, images=state.images, targets=state.targets)

    def on_train_end(self, state: TrainState) -> None:
        self.detach()

    # ----- recording ---------------------------------------------------------------------------
    def record(self, step: int, losses: Mapping[str, Any], images: Any = None, targets: Any = None) -> None:
        """Record one step: loss components and gradient norms (one sync), and on periodic steps the
        matcher statistics and output statistics on (images, targets)."""
        if self.model is None:
            raise RuntimeError("TrainingMonitor.record needs a model: pass it to the constructor or call attach(model)")
        if not self._groups:
            self.attach(self.model)
        if self.task is None and targets is not None:
            self.task = infer_task(targets)
        names = list(losses)
        values = [torch.as_tensor(v).detach().float().reshape(()) for v in losses.values()]
        group_names, norms = [], []
        for g, params in self._groups.items():
            grads = [p.grad.detach() for p in params if p.grad is not None]
            if grads:
                group_names.append(g)
                norms.append(torch.nn.utils.get_total_norm(grads, foreach=True).float().to(values[0].device if values else grads[0].device))
        flat = torch.stack(values + norms).cpu().tolist() if values or norms else []
        loss_vals, norm_vals = flat[: len(values)], flat[len(values):]
        self.steps.append(step)
        for name, v in zip(names, loss_vals):
            self.loss_history.setdefault(name, []).append(v)
            if not math.isfinite(v) and name not in self._nonfinite_seen:
                self._nonfinite_seen.add(name)
                self._nonfinite.append(loss_checks.nonfinite_finding(name, step, v))
        self.total_history.append(sum(loss_vals) if loss_vals else float("nan"))
        if norm_vals:
            self.grad_steps.append(step)
            bad = []
            for g, v in zip(group_names, norm_vals):
                self.grad_history.setdefault(g, []).append(v)
                if not math.isfinite(v):
                    bad.append((g, v))
            if bad:
                self._nonfinite_grad_steps += 1
                g, v = bad[0]
                key = f"grad:{g}"
                if key not in self._nonfinite_seen:
                    self._nonfinite_seen.add(key)
                    self._nonfinite.append(loss_checks.nonfinite_finding(g, step, v, kind="gradient of module"))
        if self._recorder is not None and self._recorder.records:
            for where, stats in self._recorder.take().items():
                self.matches.setdefault(where, []).extend(stats)
            self.match_steps.append(step)
        if self._periodic(step) and step >= self.min_steps_for_outputs and images is not None and self.task == "detection":
            self.measure_outputs(step, images, targets)

    def measure_outputs(self, step: int, images: Any, targets: Any = None) -> None:
        """The costly output probe (one eval forward without gradients; model state preserved)."""
        try:
            stats = output_checks.measure_detector_outputs(self.model, images, targets, self.threshold)
            stats.step = step
            self.output_stats.append(stats)
        except Exception as exc:  # noqa: BLE001 — a failing probe is a finding, not a crash
            self._errors.append(check_failed("monitor.measure_outputs", exc))

    # ----- results -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What the monitor measured, for a report: last loss components, last gradient norm per module,
        positives per image and their IoU per matcher, the last output statistics."""
        out: dict[str, Any] = {"steps": len(self.steps),
                               "last_losses": {k: v[-1] for k, v in self.loss_history.items() if v},
                               "last_grad_norms": {k: v[-1] for k, v in self.grad_history.items() if v}}
        matchers = {}
        for where, stats in self.matches.items():
            ious = torch.cat([s.positive_ious for s in stats]) if stats else torch.zeros(0)
            images = [s for s in stats if s.num_gt > 0]
            matchers[where] = {
                "images": len(images),
                "positives_per_image": round(sum(s.positive_ious.numel() for s in images) / max(1, len(images)), 2),
                "positive_iou_quantiles_10_50_90": ([round(float(q), 3) for q in torch.quantile(ious, torch.tensor([0.1, 0.5, 0.9]))]
                                                    if ious.numel() else [])}
        out["matchers"] = matchers
        if self.output_stats:
            out["outputs"] = self.output_stats[-1].to_evidence()
        return out

    @property
    def raised(self) -> int:
        """How many findings the per-step checks (non-finite losses and gradients) have raised so far: a
        caller showing findings as they come asks `findings()` when this grows, not only every `every` steps."""
        return len(self._nonfinite) + len(self._errors)

    def findings(self) -> list[Finding]:
        """Everything the monitor can say now (may be called at any time)."""
        out = run_stage("monitor", loss_history=self.loss_history, total_history=self.total_history, steps=self.steps,
                        window=self.window, grad_history=self.grad_history, grad_steps=self.grad_steps,
                        matches=self.matches or None, match_step=self.match_steps[-1] if self.match_steps else None,
                        stats=self.output_stats[-1] if self.output_stats else None, nonfinite=self._nonfinite,
                        nonfinite_grad_steps=self._nonfinite_grad_steps)
        return sort_findings(dedupe(out + self._errors))
