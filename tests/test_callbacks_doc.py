"""docs/callbacks.md's W&B and MLflow examples run against the real hooks (with stand-ins for the
two packages, which visiondoctor does not depend on, and a tiny Trainer in place of the demo run)."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.tiny import SquaresDataset, tiny_ssd
from visiondoctor.config import TrainConfig
from visiondoctor.data.dataset import collate_detection
from visiondoctor.engine.trainer import Trainer
from visiondoctor.tasks import pipeline

DOC = Path(__file__).resolve().parents[1] / "docs" / "callbacks.md"


def _examples() -> dict[str, str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    return {name: next(b for b in blocks if f"import {name}" in b) for name in ("wandb", "mlflow")}


class Recorder(types.ModuleType):
    """A module whose every function records its call."""

    def __init__(self, name: str):
        super().__init__(name)
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return lambda *args, **kwargs: self.calls.append((attr, args, kwargs))


def _tiny_train(task, cfg, resume=False, callbacks=()):
    torch.manual_seed(0)
    small = TrainConfig(epochs=2, batch_size=4, warmup_steps=1, device="cpu", amp="off", monitors=False, log_every=2)
    return Trainer(tiny_ssd(), SquaresDataset(8), small, collate_fn=collate_detection, evaluate_fn=_metrics,
                   callbacks=callbacks).fit()


def _metrics(model) -> dict:
    return {"map": 0.5, "per_class": {"square": {"ap": 0.5, "ap50": 0.7}}}


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_the_tracking_examples_log_history_rows(package, monkeypatch):
    module = Recorder(package)
    monkeypatch.setitem(sys.modules, package, module)
    monkeypatch.setattr(pipeline, "train", _tiny_train)
    # the documentation's own code, run as a user would paste it
    exec(compile(_examples()[package], f"docs/callbacks.md ({package})", "exec"), {"__name__": "example"})  # noqa: S102
    names = [c[0] for c in module.calls]
    logged = [c for c in module.calls if c[0] in ("log", "log_metrics")]
    assert [c[2]["step"] for c in logged] == [2, 2, 4, 4]  # train and val rows, at their steps
    assert "train/loss" in logged[0][1][0] and "train/lr" in logged[0][1][0] and "val/map" in logged[1][1][0]
    assert names[0] in ("init", "start_run") and names[-1] in ("finish", "end_run")
    if package == "mlflow":
        assert ("log_metric", ("val/ap/square", 0.5), {"step": 2}) in module.calls
