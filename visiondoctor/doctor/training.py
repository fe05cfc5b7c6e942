"""Short monitored training runs for the doctor, through the engine's Trainer (the project's one loop)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from visiondoctor.config import TrainConfig
from visiondoctor.data.dataset import collate_detection
from visiondoctor.data.segmentation import collate_segmentation
from visiondoctor.doctor.model_io import ModelIO
from visiondoctor.engine.callbacks import Callback, TrainState
from visiondoctor.engine.trainer import Trainer, TrainResult


class StopAfter(Callback):
    """Ask the Trainer to stop after `steps` optimizer steps (it counts in epochs otherwise)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def after_step(self, state: TrainState) -> None:
        if state.step >= self.steps:
            state.stop = True


def collate_for(task: str) -> Callable[[list], tuple[Any, Any]]:
    """The batch collation of the task's contract: lists for detection, stacked tensors for segmentation."""
    return collate_detection if task == "detection" else collate_segmentation


def short_config(steps: int, batch_size: int, dataset_len: int, lr: float, optimizer: str = "adamw",
                 device: str = "cpu", seed: int = 0, grad_clip: float = 10.0, eval_every: int = 1) -> TrainConfig:
    """A TrainConfig for a short diagnostic run: constant learning rate after a brief warm-up, no checkpoints."""
    per_epoch = max(1, dataset_len // max(1, batch_size))
    return TrainConfig(epochs=max(1, -(-steps // per_epoch)), batch_size=batch_size, optimizer=optimizer, lr=lr,
                       warmup_steps=min(20, max(1, steps // 10)), scheduler="constant", grad_clip=grad_clip,
                       amp="off", device=device, seed=seed, monitors=True, checkpoint_every=10**9, eval_every=eval_every)


def run_config(config: TrainConfig, steps: int, batch_size: int, dataset_len: int, device: str = "cpu",
               seed: int = 0) -> TrainConfig:
    """A user's training settings (optimizer, lr, momentum, weight decay, schedule, clipping, loss weights) for a
    short diagnostic run of `steps` steps: warm-up within the first fifth, no checkpoints, no time budget."""
    per_epoch = max(1, dataset_len // max(1, batch_size))
    return replace(config, epochs=max(1, -(-steps // per_epoch)), batch_size=batch_size, max_minutes=0.0,
                   warmup_steps=min(config.warmup_steps, max(1, steps // 5)), amp="off", device=device, seed=seed,
                   monitors=True, checkpoint_every=10**9, checkpoint_every_steps=0, eval_every=1, tensorboard=False,
                   early_stop_patience=0, compile=False)


def train_briefly(model: nn.Module, train_set: Dataset, io: ModelIO, steps: int, batch_size: int = 4, lr: float = 1e-3,
                  callbacks: Sequence[Callback] = (), val_set: Dataset | None = None, optimizer: str = "adamw",
                  device: str = "cpu", seed: int = 0, eval_every: int = 1, grad_clip: float = 10.0,
                  config: TrainConfig | None = None) -> tuple[Trainer, TrainResult]:
    """Train `model` for `steps` steps with the engine's Trainer, the given callbacks attached. With `config` (the
    run's own settings) the short run trains as the run would; otherwise AdamW at `lr` with a constant schedule."""
    torch.manual_seed(seed)
    cfg = (run_config(config, steps, batch_size, len(train_set), device, seed) if config is not None
           else short_config(steps, batch_size, len(train_set), lr, optimizer, device, seed, grad_clip, eval_every))

    def loss_fn(m: nn.Module, images: Any, targets: Any) -> dict[str, torch.Tensor]:
        return io.losses(m, images, targets)

    trainer = Trainer(model, train_set, cfg, collate_fn=collate_for(io.task), loss_fn=loss_fn, val_set=val_set,
                      callbacks=[*callbacks, StopAfter(steps)])
    return trainer, trainer.fit()
