"""The training engine: loss goes down, exact resume, checkpoint safety, schedule, callbacks."""
from __future__ import annotations

import math

import pytest
import torch

from tests.tiny import SquaresDataset, tiny_ssd
from visiondoctor.config import TrainConfig
from visiondoctor.data.dataset import collate_detection
from visiondoctor.engine.callbacks import Callback
from visiondoctor.engine.checkpoint import (CheckpointError, list_checkpoints, load_checkpoint_file, load_latest,
                                            save_checkpoint)
from visiondoctor.engine.trainer import Trainer, lr_factor


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, lr=0.01, warmup_steps=2, device="cpu", amp="off", seed=0, monitors=False)
    base.update(kw)
    return TrainConfig(**base)


def _trainer(tmp_path, cfg, callbacks=(), seed=0):
    torch.manual_seed(seed)
    return Trainer(tiny_ssd(), SquaresDataset(16), cfg, collate_fn=collate_detection, callbacks=callbacks,
                   run_dir=tmp_path)


def test_loss_goes_down_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    data = SquaresDataset(4)
    trainer = Trainer(tiny_ssd(), data, _cfg(epochs=40, batch_size=4, lr=0.05, scheduler="constant"),
                      collate_fn=collate_detection, run_dir=tmp_path)
    result = trainer.fit()
    train_rows = [r for r in result.history if r["split"] == "train"]
    first, last = train_rows[0]["loss"], train_rows[-1]["loss"]
    assert last < 0.5 * first, (first, last)
    # every loss component is recorded separately, not only the sum
    assert {"loss_classification", "loss_bbox_regression"} <= set(train_rows[-1])
    assert (tmp_path / "history.csv").read_text().splitlines()[0].count("loss_") >= 2


class StopAfter(Callback):
    def __init__(self, steps: int):
        self.steps = steps

    def after_step(self, state):
        if state.step >= self.steps:
            state.stop = True


def test_resume_continues_from_the_saved_step_with_identical_result(tmp_path):
    cfg = _cfg(epochs=3, checkpoint_every_steps=1)
    reference = _trainer(tmp_path / "ref", cfg)
    reference.fit()

    interrupted = _trainer(tmp_path / "run", cfg, callbacks=[StopAfter(5)])  # 4 steps/epoch: stops mid-epoch 2
    interrupted.fit()
    assert interrupted.state.step == 5

    resumed = _trainer(tmp_path / "run", cfg, seed=123)  # different init: must be overwritten by the checkpoint
    assert resumed.resume()
    assert resumed.state.step == 5 and resumed.state.epoch == 1
    assert resumed.optimizer.state_dict()["state"], "optimizer state (momentum) restored"
    resumed.fit()
    assert resumed.state.step == reference.state.step == 12
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_corrupted_last_checkpoint_falls_back_to_previous(tmp_path, caplog):
    save_checkpoint(tmp_path, 1, {"x": torch.ones(3), "step": 1}, keep=3)
    last = save_checkpoint(tmp_path, 2, {"x": torch.zeros(3), "step": 2}, keep=3)
    last.write_bytes(last.read_bytes()[:-40])  # truncate
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint_file(last)
    path, state = load_latest(tmp_path)
    assert state["step"] == 1 and path.name == "step_00000001.pt"
    assert "falling back" in caplog.text


class Evil:
    """Stands for any pickled Python object a shared checkpoint could carry."""


def test_checkpoints_are_pruned_and_never_unpickled(tmp_path):
    for step in range(5):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt", "step_00000004.pt"]
    # a checkpoint carrying an arbitrary Python object is refused by weights_only loading
    import io

    buf = io.BytesIO()
    torch.save({"obj": Evil()}, buf)
    (tmp_path / "step_00000009.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError):
        load_checkpoint_file(tmp_path / "step_00000009.pt")


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"step": 1})
    import visiondoctor.engine.checkpoint as ck

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "write_bytes_atomic", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, {"step": 2})
    monkeypatch.undo()
    assert load_latest(tmp_path)[1]["step"] == 1


def test_lr_schedule_warmup_then_cosine_over_steps_or_time():
    assert lr_factor(0, 100, 0, 0, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 0, 0, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.09)))
    assert lr_factor(100, 100, 0, 0, 0, "cosine") == pytest.approx(0.0)
    # the time budget binds first: halfway through the time at step 10 of 100
    assert lr_factor(10, 100, 30, 60, 0, "cosine") == pytest.approx(0.5)
    assert lr_factor(50, 100, 0, 0, 10, "constant") == 1.0


class Boom(Callback):
    def after_step(self, state):
        raise RuntimeError("broken check")


def test_a_failing_callback_never_stops_the_run(tmp_path):
    trainer = _trainer(tmp_path, _cfg(epochs=1), callbacks=[Boom()])
    result = trainer.fit()
    assert result.steps == 4
    assert any("broken check" in e for e in trainer.state.extra["callback_errors"])


def test_time_budget_stops_training(tmp_path):
    result = _trainer(tmp_path, _cfg(epochs=1000, max_minutes=0.02)).fit()
    assert result.stopped_by == "time" and result.epochs_completed < 1000


def test_ema_weights_differ_and_are_used_for_evaluation(tmp_path):
    seen = {}
    trainer = _trainer(tmp_path, _cfg(epochs=1, ema=True, ema_decay=0.9))
    trainer.evaluate_fn = lambda m: seen.setdefault("model", m) and {"map": 0.0}
    trainer.fit()
    assert seen["model"] is trainer.ema.module
    ema_w = next(trainer.ema.module.parameters())
    assert not torch.equal(ema_w, next(trainer.model.parameters()))
