"""Hook points of the training loop. Extending the loop means writing a Callback.

Every hook receives the `TrainState`, a plain record of what the loop knows now; hooks
write what they measure into `state.log` (an event storage, as in Detectron2), which the
trainer averages over `train.log_every` steps into history.csv rows (passed to `on_log`).
docs/callbacks.md lists the hooks and fields, with W&B and MLflow examples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class TrainState:
    model: "nn.Module"
    optimizer: "torch.optim.Optimizer"
    epoch: int = 0
    step: int = 0  # global optimizer step
    images: Any = None  # the current batch (list of CHW tensors or a tensor)
    targets: Any = None
    losses: dict[str, "torch.Tensor"] = field(default_factory=dict)  # named loss components, this step
    loss: "torch.Tensor | None" = None  # weighted total that was backpropagated
    grad_norm: float | None = None
    log: dict[str, float] = field(default_factory=dict)  # scalars for history, cleared each step
    stop: bool = False  # a callback may ask the loop to stop (prefer request_stop, which says why)
    stop_reason: str | None = None  # why; recorded as TrainResult.stopped_by "callback: <reason>"
    extra: dict[str, Any] = field(default_factory=dict)

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after this step (or this evaluation); it still evaluates, writes
        its last checkpoint and history, and records `reason` in train_result.json."""
        self.stop, self.stop_reason = True, reason


class Callback:
    """Override what you need. Exceptions in a callback are the callback's own business:
    the trainer reports them and goes on (a failing check must never stop a run)."""

    def on_train_start(self, state: TrainState) -> None: ...
    def before_step(self, state: TrainState) -> None: ...
    def after_forward(self, state: TrainState) -> None: ...
    def after_backward(self, state: TrainState) -> None: ...
    def after_step(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_log(self, state: TrainState, row: dict[str, Any]) -> None: ...  # a history row, train or val
    def on_eval_end(self, state: TrainState, metrics: dict[str, Any]) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...
