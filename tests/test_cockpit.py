"""What a user sees while a run trains: the time remaining, history rows every train.log_every steps
(exact across a crash and resume), each evaluation's metrics in history and in the log, TensorBoard
event files, and a stop asked by a callback recorded with its reason."""
from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
from contextlib import contextmanager

import numpy as np
import pytest
import rich
import torch
from rich.logging import RichHandler

from tests.tiny import SquaresDataset, tiny_ssd
from tests.tinyruns import SHAPES_96
from visiondoctor.config import TrainConfig, load_config
from visiondoctor.data.dataset import collate_detection
from visiondoctor.engine.callbacks import Callback, TrainState
from visiondoctor.engine.progress import (
    Eta,
    TrainProgress,
    console,
    format_duration,
    live,
    progress_text,
    setup_logging,
    time_remaining,
)
from visiondoctor.engine.trainer import Trainer, eval_summary
from visiondoctor.report.curves import curve
from visiondoctor.report.inputs import read_history
from visiondoctor.rundir import RunDir
from visiondoctor.tasks.pipeline import task_for, train

STEPS_PER_EPOCH = 4  # SquaresDataset(16) in batches of 4


def _cfg(**kw) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 4, "lr": 0.01, "warmup_steps": 2, "device": "cpu", "amp": "off", "seed": 0,
            "monitors": False}
    base.update(kw)
    return TrainConfig(**base)


def _trainer(run_dir, cfg, callbacks=(), evaluate_fn=None, seed=0):
    torch.manual_seed(seed)
    return Trainer(tiny_ssd(), SquaresDataset(16), cfg, collate_fn=collate_detection, callbacks=callbacks,
                   evaluate_fn=evaluate_fn, run_dir=run_dir)


def _train_rows(history):
    return [r for r in history if r["split"] == "train"]


# ----- time remaining ---------------------------------------------------------------------------------

def test_time_remaining_comes_from_the_step_budget_at_this_sessions_pace():
    eta = time_remaining(10, 100, 20.0)
    assert eta.binding == "steps" and eta.remaining_s == pytest.approx(180.0) and eta.fraction == pytest.approx(0.1)
    # a resumed run: 50 steps took 500 s before, this session does a step per second
    resumed = time_remaining(60, 100, 510.0, start_step=50, start_elapsed_s=500.0)
    assert resumed.remaining_s == pytest.approx(40.0)
    # nothing timed yet, no time budget: not known
    assert time_remaining(0, 100, 0.0).remaining_s is None


def test_time_remaining_comes_from_the_time_budget_when_it_ends_first():
    eta = time_remaining(10, 1000, 60.0, budget_s=120.0)  # 990 steps at 6 s each would take far longer
    assert eta == Eta(60.0, 0.5, "time")
    # a time budget that the step budget beats does not bind
    assert time_remaining(50, 100, 50.0, budget_s=1000.0) == Eta(50.0, 0.5, "steps")
    # before the first step only the time budget is known
    assert time_remaining(0, 100, 0.0, budget_s=300.0) == Eta(300.0, 0.0, "time")
    assert time_remaining(5, 100, 400.0, budget_s=300.0).remaining_s == 0.0


def test_the_bar_shows_the_totals_of_the_binding_budget_only():
    under_time = progress_text(5, 500, 1, 100, Eta(3600.0, 0.5, "time"), 1.5, 12.0)
    assert "epoch 1" in under_time and "/100" not in under_time and "/500" not in under_time
    assert "1:00:00 left (time budget)" in under_time
    under_steps = progress_text(5, 500, 1, 100, Eta(65.0, 0.01, "steps"), 1.5, 12.0)
    assert "step 5/500  epoch 1/100" in under_steps and "1:05 left" in under_steps
    assert format_duration(None) == "?"


# ----- history rows ---------------------------------------------------------------------------------

class LossRecorder(Callback):
    def __init__(self):
        self.losses: dict[int, float] = {}
        self.rows: list[dict] = []

    def after_step(self, state: TrainState) -> None:
        self.losses[state.step] = state.log["loss"]

    def on_log(self, state: TrainState, row: dict) -> None:
        self.rows.append(row)


def test_a_train_row_every_log_every_steps_and_at_each_epoch_end(tmp_path):
    recorder = LossRecorder()
    trainer = _trainer(tmp_path, _cfg(log_every=3), callbacks=[recorder])
    result = trainer.fit()
    rows = _train_rows(result.history)
    # every 3rd step, plus the rest of each 4-step epoch
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 3), (1, 4), (2, 6), (2, 8), (3, 9), (3, 12)]
    # each row averages the steps since the previous one
    assert rows[0]["loss"] == pytest.approx(np.mean([recorder.losses[s] for s in (1, 2, 3)]))
    assert rows[1]["loss"] == pytest.approx(recorder.losses[4])
    assert rows[3]["loss"] == pytest.approx(np.mean([recorder.losses[s] for s in (7, 8)]))
    for row in rows:
        assert {"lr", "images_per_s", "grad_norm", "loss_classification", "loss_bbox_regression"} <= set(row)
    # callbacks receive every row (on_log), and history.csv holds them
    assert [r["step"] for r in recorder.rows if r["split"] == "train"] == [3, 4, 6, 8, 9, 12]
    with open(tmp_path / "history.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh) if r["split"] == "train"] == [3, 4, 6, 8, 9, 12]


def test_short_epochs_get_one_row_each_with_the_default(tmp_path):
    assert TrainConfig().log_every == 50
    rows = _train_rows(_trainer(tmp_path, _cfg()).fit().history)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 4), (2, 8), (3, 12)]


class Crash(Callback):
    """Stands for a kill: an exception the trainer does not catch, after step `at`."""

    def __init__(self, at: int):
        self.at = at

    def after_step(self, state: TrainState) -> None:
        if state.step == self.at:
            raise KeyboardInterrupt


def test_rows_after_a_crash_and_resume_are_those_of_an_uninterrupted_run(tmp_path):
    cfg = _cfg(log_every=3, checkpoint_every_steps=1)
    reference = _train_rows(_trainer(tmp_path / "ref", cfg).fit().history)

    with pytest.raises(KeyboardInterrupt):  # during step 8: the checkpoint of step 7 holds step 7 not yet logged
        _trainer(tmp_path / "run", cfg, callbacks=[Crash(8)]).fit()
    resumed = _trainer(tmp_path / "run", cfg, seed=1)
    assert resumed.resume() and resumed.state.step == 7
    rows = _train_rows(resumed.fit().history)
    assert [(r["epoch"], r["step"]) for r in rows] == [(r["epoch"], r["step"]) for r in reference]
    for a, b in zip(rows, reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a["step"], a["loss"], b["loss"])


# ----- evaluations ---------------------------------------------------------------------------------------

def test_each_evaluation_is_logged_and_kept_in_history(tmp_path, caplog):
    evaluations = iter([0.125, 0.25, 0.5])

    def evaluate(model):
        value = next(evaluations)
        return {"map": value, "map50": 2 * value, "per_class": {"square": value}, "subset": None}

    with caplog.at_level(logging.INFO, logger="visiondoctor.engine.trainer"):
        result = _trainer(tmp_path, _cfg(), evaluate_fn=evaluate).fit()
    val = [r for r in result.history if r["split"] == "val"]
    assert [(r["epoch"], r["step"], r["map"], r["map50"]) for r in val] == [
        (1, 4, 0.125, 0.25), (2, 8, 0.25, 0.5), (3, 12, 0.5, 1.0)]
    assert "per_class" not in val[0]  # numbers only
    evals = [m for m in caplog.messages if m.startswith("eval")]
    assert len(evals) == 3
    assert "step 8" in evals[1] and "epoch 2" in evals[1] and "mAP@[.5:.95] 0.2500  AP50 0.5000" in evals[1]
    # a line per history row too, with the time remaining
    assert sum("left" in m and m.startswith("step") for m in caplog.messages) == 3


def test_the_evaluation_line_puts_the_primary_metric_first():
    line = eval_summary({"map": 0.1, "miou": 0.4, "pixel_accuracy": 0.9, "flag": True}, "miou", 1.25)
    assert line.startswith("mIoU 0.4000") and "val loss 1.2500" in line and "flag" not in line
    assert eval_summary({}, "map") == "no metrics"


# ----- stopping ------------------------------------------------------------------------------------------

class StopAt(Callback):
    def __init__(self, step: int, reason: str | None):
        self.step, self.reason = step, reason

    def after_step(self, state: TrainState) -> None:
        if state.step == self.step:
            if self.reason is None:
                state.stop = True
            else:
                state.request_stop(self.reason)


def test_a_stop_asked_by_a_callback_is_recorded_with_its_reason(tmp_path):
    trainer = _trainer(tmp_path, _cfg(log_every=2), callbacks=[StopAt(3, "doctor: loss.nan (error)")],
                       evaluate_fn=lambda m: {"map": 0.0})
    result = trainer.fit()
    assert result.steps == 3 and result.stopped_by == "callback: doctor: loss.nan (error)"
    assert result.stop_reason == "doctor: loss.nan (error)"
    # the last checkpoint and the history are still written, the partial epoch included
    assert (tmp_path / "checkpoints" / "step_00000003.pt").exists()
    with open(tmp_path / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["split"], r["step"]) for r in rows] == [("train", "2"), ("train", "3"), ("val", "3")]


def test_a_plain_stop_flag_still_stops_without_a_reason(tmp_path):
    result = _trainer(tmp_path, _cfg(), callbacks=[StopAt(2, None)]).fit()
    assert result.steps == 2 and result.stopped_by == "callback" and result.stop_reason is None


class StopAfterEval(Callback):
    def on_eval_end(self, state, metrics):
        state.request_stop(f"map {metrics['map']} is enough")


def test_a_stop_asked_at_an_evaluation_ends_the_run_there(tmp_path):
    result = _trainer(tmp_path, _cfg(), callbacks=[StopAfterEval()], evaluate_fn=lambda m: {"map": 0.5}).fit()
    assert result.steps == STEPS_PER_EPOCH and result.epochs_completed == 1
    assert result.stopped_by == "callback: map 0.5 is enough"
    assert (tmp_path / "checkpoints" / f"step_{STEPS_PER_EPOCH:08d}.pt").exists()


def test_stop_on_and_log_every_are_checked():
    with pytest.raises(ValueError, match="train.stop_on='sometimes'"):
        _trainer(None, _cfg(stop_on="sometimes"))
    with pytest.raises(ValueError, match="train.log_every=-1"):
        _trainer(None, _cfg(log_every=-1))


# ----- TensorBoard ---------------------------------------------------------------------------------------

def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_a_scalar_per_logged_step(tmp_path):
    pytest.importorskip("tensorboard")
    trainer = _trainer(tmp_path, _cfg(epochs=2, log_every=1, tensorboard=True), evaluate_fn=lambda m: {"map": 0.5})
    trainer.fit()
    trainer.tensorboard.add_text("doctor/findings", "**loss.nan**: the loss is NaN", trainer.state.step)
    trainer.tensorboard.add_images("predictions", [np.zeros((20, 30, 3), np.uint8), torch.rand(3, 16, 16)],
                                   trainer.state.step)
    trainer.tensorboard.close()

    acc = _events(tmp_path / "tensorboard")
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_classification", "train/loss_bbox_regression", "train/lr",
            "train/images_per_s", "train/grad_norm", "val/map"} <= scalars
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 2 * STEPS_PER_EPOCH + 1))  # not per epoch
    history_losses = [r["loss"] for r in _train_rows(trainer.history)]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(history_losses, rel=1e-6)
    assert [(e.step, e.value) for e in acc.Scalars("val/map")] == [(4, 0.5), (8, 0.5)]
    assert {"predictions/0", "predictions/1"} <= set(acc.Tags()["images"])
    assert acc.Images("predictions/0")[0].width == 30
    assert any(tag.startswith("doctor/findings") for tag in acc.Tags()["tensors"])


def test_tensorboard_without_the_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"visiondoctor\[tensorboard\]"):
        _trainer(tmp_path, _cfg(tensorboard=True))
    # no run directory: nothing to write, nothing needed
    assert _trainer(None, _cfg(tensorboard=True)).tensorboard is None


# ----- a whole run ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_stopped_by_a_callback_says_why_and_its_report_draws_per_step_curves(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = load_config(None, [*SHAPES_96, "model.name=ssdlite320_mobilenet_v3_large", "model.image_size=96",
                             "train.epochs=3", "train.batch_size=4", "train.warmup_steps=2", "train.monitors=false",
                             "train.log_every=2", "train.tensorboard=true", f"output_dir={tmp_path}", "name=stopped"])
    run = train(task_for(cfg), cfg, callbacks=[StopAt(7, "doctor: test stop")]).path  # 4 steps per epoch
    result = json.loads((run / "train_result.json").read_text())
    assert result["steps"] == 7 and result["stopped_by"] == "callback: doctor: test stop"
    with open(run / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows if r["split"] == "train"] == [2, 4, 6, 7]
    assert any(r["split"] == "val" and r["map"] != "" for r in rows)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # the report draws its curves from those rows, x = step
    rundir = RunDir.open(run)
    assert curve(read_history(rundir), "loss", "train", "step").x == [2, 4, 6, 7]
    assert "<h2>Training curves</h2>" in (run / "report.html").read_text(encoding="utf-8")
    for plot in ("loss_curves", "optimisation"):
        assert (run / "plots" / f"{plot}.png").read_bytes().startswith(b"\x89PNG"), plot


# ----- console ---------------------------------------------------------------------------------------------

@contextmanager
def bare_logging():
    """The root logger without pytest's capture handlers (so setup_logging installs its own); the
    handlers, level and rich's console restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    try:
        yield root
    finally:
        root.handlers, root.level = saved[0], saved[1]
        rich.reconfigure()


def test_log_lines_print_above_a_live_bar(monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal, as far as rich can tell
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    out = io.StringIO()
    with bare_logging() as root:
        setup_logging(verbose=False)
        assert isinstance(root.handlers[0], RichHandler)
        console().file = out
        with TrainProgress() as bar:
            bar.update(0.5, "step 5/10  epoch 1/2")
            logging.getLogger("visiondoctor.test").info("a line written mid-epoch")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "a line written mid-epoch" in text  # whole, on its own line, with the bar redrawn below it
    line = next(x for x in text.replace("\r", "\n").splitlines() if "mid-epoch" in x)
    assert "step 5/10" not in line


def test_other_ranks_draw_no_bars_and_log_warnings_only(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with bare_logging() as root:
        setup_logging(verbose=False)
        assert console().quiet and root.level == logging.WARNING
        assert "rank 1:" in root.handlers[0].formatter._fmt


def test_into_a_file_lines_stay_plain(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")  # not a terminal, even under pytest -s
    with bare_logging() as root:
        setup_logging(verbose=True)
        assert not live() and not isinstance(root.handlers[0], RichHandler)
        assert root.level == logging.DEBUG
