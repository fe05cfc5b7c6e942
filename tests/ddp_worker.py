"""The Trainer on a model for which data parallelism is exact, run by tests/test_distributed.py
under torchrun (`python -m torch.distributed.run --nproc_per_node=2 -m tests.ddp_worker OUT`)
and in-process as the one-process reference.

The model has no BatchNorm and its loss is a per-sample mean, so N processes with a batch of
B/N each must reproduce one process with a batch of B up to float rounding: the same steps,
the same weights, the same logged losses. Each rank records which samples it trained on and
the metrics it received, as JSON in OUT.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from visiondoctor.config import TrainConfig
from visiondoctor.engine import distributed as dist_utils
from visiondoctor.engine.callbacks import Callback, TrainState
from visiondoctor.engine.trainer import Trainer

NUM_SAMPLES = 24
GLOBAL_BATCH = 8
EPOCHS = 2


class RegressionData(Dataset):
    """Fixed random 3x8x8 inputs with a target that a small CNN can fit."""

    def __init__(self, n: int = NUM_SAMPLES, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = self.x[:, 0].mean(dim=(1, 2)) * 2.0 - self.x[:, 2, :4].mean(dim=(1, 2))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.x[i], {"y": self.y[i], "index": i}


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 1))


def mse_loss(model: nn.Module, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"mse": F.mse_loss(model(images).squeeze(1), targets["y"])}


class Recorder(Callback):
    """The sample indices of every step and the metrics this rank was given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.metrics: list[dict[str, Any]] = []

    def before_step(self, state: TrainState) -> None:
        self.batches.append([int(i) for i in state.targets["index"]])

    def on_eval_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        self.metrics.append(dict(metrics))


def run(out: Path) -> dict[str, Any]:
    """Train, and write rank<k>.json (plus weights.pt from rank 0) into `out`."""
    dist_utils.init()
    torch.manual_seed(0)
    data, held_out = RegressionData(), RegressionData(8, seed=1)
    eval_calls = []

    def evaluate(model: nn.Module) -> dict[str, Any]:
        eval_calls.append(1)
        x, y = held_out.x, held_out.y
        return {"map": -float(F.mse_loss(model(x).squeeze(1), y))}  # any number that depends on the weights

    recorder = Recorder()
    cfg = TrainConfig(epochs=EPOCHS, batch_size=GLOBAL_BATCH, lr=0.05, warmup_steps=2, device="cpu", amp="off",
                      seed=0, monitors=False, checkpoint_every_steps=2)
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(small_cnn(), data, cfg, loss_fn=mse_loss, evaluate_fn=evaluate, callbacks=[recorder],
                      run_dir=out / "run")
    torch.manual_seed(1000 + dist_utils.rank())  # each rank its own random stream (as augmentations make them)
    result = trainer.fit()
    rng_at_end = torch.get_rng_state()
    dist_utils.barrier()  # rank 0 has written the last checkpoint
    resumed = Trainer(small_cnn(), data, cfg, loss_fn=mse_loss, run_dir=out / "run")
    torch.manual_seed(7)
    resumed.resume()
    record = {"rank": dist_utils.rank(), "world": dist_utils.world_size(), "steps": result.steps,
              "batches": recorder.batches, "eval_calls": len(eval_calls), "metrics_seen": recorder.metrics,
              "history": result.history, "resumed_step": resumed.state.step,
              "resumed_own_random_state": torch.equal(torch.get_rng_state(), rng_at_end)}
    (out / f"rank{dist_utils.rank()}.json").write_text(json.dumps(record))
    if dist_utils.is_main():
        torch.save(trainer.model.state_dict(), out / "weights.pt")
    dist_utils.barrier()
    return record


if __name__ == "__main__":
    run(Path(sys.argv[1]))
