"""Gradual unfreezing: backbone stages start frozen and are released one by one at given epochs.

Used in the later incremental phases: the heads adapt to the new classes first while the
features the old classes rely on stay fixed, then the deeper stages follow. Frozen stages
have their BatchNorm statistics frozen too (TwoStageDetector keeps the BatchNorm of frozen
parameters in eval mode), so a frozen stage computes exactly what it computed before.
"""
from __future__ import annotations

import logging
from typing import Mapping

from visiondoctor.engine.callbacks import Callback, TrainState
from visiondoctor.models.two_stage import TwoStageDetector, set_stage_trainable

log = logging.getLogger(__name__)


class GradualUnfreezing(Callback):
    """`schedule`: backbone stage -> epoch at which it becomes trainable (None: frozen for the
    whole run). Create the callback before the Trainer: it makes the stages it will release
    trainable so the Trainer's optimizer holds their parameters, and freezes them at the start of
    training (frozen parameters get no gradient, so the optimizer skips them until released)."""

    def __init__(self, model: TwoStageDetector, schedule: Mapping[str, int | None]) -> None:
        self.model = model
        self.schedule = dict(schedule)
        self.frozen: set[str] = set()
        for stage, epoch in self.schedule.items():
            model.backbone.stage(stage)  # raises on an unknown stage name
            if epoch is not None:  # trainable now, so the Trainer built next puts it in its optimizer
                set_stage_trainable(model, stage, True)

    def on_train_start(self, state: TrainState) -> None:
        held = {id(p) for group in state.optimizer.param_groups for p in group["params"]}
        for stage in self.schedule:
            params = [p for m in self.model.backbone.stage(stage) for p in m.parameters()]
            if self.schedule[stage] is not None and any(id(p) not in held for p in params):
                raise RuntimeError(f"GradualUnfreezing: stage {stage!r} is not in the optimizer; build the Trainer "
                                   "before freezing it, or it can never be trained after release")
            set_stage_trainable(self.model, stage, False)
            for p in params:
                p.grad = None
            self.frozen.add(stage)
        self._release(state)

    def on_epoch_end(self, state: TrainState) -> None:
        self._release(state)

    def _release(self, state: TrainState) -> None:
        for stage, epoch in self.schedule.items():
            if stage in self.frozen and epoch is not None and state.epoch >= epoch:
                set_stage_trainable(self.model, stage, True)
                self.frozen.discard(stage)
                log.info("unfroze backbone stage %s at epoch %d", stage, state.epoch)

    def after_step(self, state: TrainState) -> None:
        state.log["frozen_stages"] = float(len(self.frozen))  # into history.csv with the losses
