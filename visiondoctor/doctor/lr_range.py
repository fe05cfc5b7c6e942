"""A short learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks", 2017):
the configured optimizer on one batch, the learning rate raised geometrically at every step, the loss
recorded. Where the loss falls fastest is a learning rate that trains; where it blows up (or turns
non-finite) is one that diverges. The configured learning rate is then placed on that measured range.

It runs on a copy of the model with the run's own optimizer settings (type, momentum, weight decay,
gradient clipping), so what it measures is the run as configured, not a default of the doctor's.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from visiondoctor.config import TrainConfig
from visiondoctor.doctor.model_io import ModelIO, total_loss
from visiondoctor.doctor.probe import model_device, to_device
from visiondoctor.engine.trainer import build_optimizer

DIVERGED = 4.0  # loss above this multiple of the lowest one seen: the step size has blown the fit up
ONSET_DROP = 0.1  # the loss has clearly started to fall once it is 10 % below where it started


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    diverged_at: float | None = None  # the first learning rate at which the loss blew up
    steepest: float | None = None  # the learning rate where the loss fell fastest (smoothed)
    onset: float | None = None  # the lowest learning rate at which the loss had fallen by ONSET_DROP
    configured: float = 0.0

    def to_evidence(self) -> dict[str, Any]:
        return {"configured_lr": self.configured, "loss_starts_falling_at_lr": _round(self.onset),
                "steepest_descent_lr": _round(self.steepest),
                "diverges_from_lr": _round(self.diverged_at), "lr_tested": [_round(self.lrs[0]), _round(self.lrs[-1])] if self.lrs else [],
                "steps": len(self.losses), "loss_first_last": [round(self.losses[0], 5), round(self.losses[-1], 5)] if self.losses else []}


def _round(v: float | None) -> float | None:
    return None if v is None else float(f"{v:.2g}")


def lr_range_test(model: nn.Module, io: ModelIO, images: Any, targets: Any, cfg: TrainConfig, start: float = 1e-6,
                  stop: float = 10.0, steps: int = 32) -> RangeTest:
    """The range test on a copy of `model` with cfg's optimizer (lr from `start` to max(stop, 10 x cfg.lr))."""
    probe = copy.deepcopy(model)
    probe.train()
    images, targets = to_device(images, targets, model_device(probe))
    stop = max(stop, 10 * cfg.lr)
    factor = (stop / start) ** (1 / max(1, steps - 1))
    optimizer = build_optimizer(probe, replace(cfg, lr=start))
    result = RangeTest(configured=cfg.lr)
    best = math.inf
    lr = start
    for _ in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = total_loss(io.losses(probe, images, targets))
        value = float(loss.detach())
        result.lrs.append(lr)
        result.losses.append(value)
        if not math.isfinite(value) or value > DIVERGED * best:
            result.diverged_at = lr
            break
        best = min(best, value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in probe.parameters() if p.grad is not None], cfg.grad_clip)
        optimizer.step()
        lr *= factor
    result.steepest = _steepest(result)
    result.onset = _onset(result)
    return result


def _onset(result: RangeTest) -> float | None:
    """The first learning rate after which the (3-point smoothed) loss stays below (1 - ONSET_DROP) of the start."""
    losses = result.losses[: len(result.losses) - (1 if result.diverged_at is not None else 0)]
    if len(losses) < 5 or not math.isfinite(losses[0]) or losses[0] <= 0:
        return None
    smooth = [sum(losses[max(0, i - 1): i + 2]) / len(losses[max(0, i - 1): i + 2]) for i in range(len(losses))]
    start = smooth[0]
    for i, v in enumerate(smooth):
        if v < (1 - ONSET_DROP) * start:
            return result.lrs[i]
    return None


def _steepest(result: RangeTest) -> float | None:
    """The learning rate with the most negative slope of the (3-point smoothed) loss per log-lr step."""
    losses = result.losses[: len(result.losses) - (1 if result.diverged_at is not None else 0)]
    if len(losses) < 5:
        return None
    smooth = [sum(losses[max(0, i - 1): i + 2]) / len(losses[max(0, i - 1): i + 2]) for i in range(len(losses))]
    slopes = [smooth[i + 1] - smooth[i] for i in range(len(smooth) - 1)]
    i = min(range(len(slopes)), key=lambda k: slopes[k])
    return result.lrs[i] if slopes[i] < 0 else None
