"""`diagnose`: the whole doctor on a model factory and data — static and probe checks, the
overfit-one-batch probe, a short monitored training (the engine's Trainer), an evaluation — and
diagnosis.json / diagnosis.md in `out_dir`.

A user's model comes in through `load_factory("path.py:factory")` (the file is executed only
because the user named it); the factory returns an nn.Module following torchvision conventions
and may take `num_classes`. A segmentation loss comes through `--loss-file path.py:fn`,
`fn(outputs, targets) -> loss tensor or {name: loss}`.
"""
from __future__ import annotations

import copy
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from visiondoctor.config import TrainConfig
from visiondoctor.doctor.checks import outputs, run_stage
from visiondoctor.doctor.checks.outputs import DOCTOR_THRESHOLD
from visiondoctor.doctor.coco_io import coco_from_batches
from visiondoctor.doctor.diagnosis_file import write_diagnosis
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.lr_range import lr_range_test
from visiondoctor.doctor.model_io import (
    LossFn,
    ModelIO,
    image_sizes,
    split_segmentation_outputs,
    stack_images,
    stack_masks,
)
from visiondoctor.doctor.monitor import TrainingMonitor
from visiondoctor.doctor.overfit import overfit_one_batch, recalibrate_batchnorm
from visiondoctor.doctor.probe import model_device, to_device
from visiondoctor.doctor.runner import check_failed, dedupe, sort_findings
from visiondoctor.doctor.static import static_checks
from visiondoctor.doctor.training import collate_for, train_briefly
from visiondoctor.engine.callbacks import Callback, TrainState
from visiondoctor.evaluation.consistency import score_iou_consistency
from visiondoctor.evaluation.errors import tide_errors
from visiondoctor.evaluation.segmentation import ConfusionMatrix
from visiondoctor.report.plots import score_histogram
from visiondoctor.rundir import write_bytes_atomic

log = logging.getLogger(__name__)
SCORE_PLOT = "plots/doctor_fg_scores.png"  # run-dir relative, as the report expects evidence["plot"]
SCORE_PLOT_IDS = ("output.background-collapse", "output.detections-per-image")


class UserCodeError(ValueError):
    """A --model-file / --loss-file spec that cannot be loaded (names the file and the symbol)."""


def load_callable(spec: str, what: str = "--model-file") -> Callable[..., Any]:
    """`path.py:name` -> the callable `name` defined in that file (the file is imported as a module)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise UserCodeError(f"{what} {spec!r}: expected path.py:function")
    file = Path(path)
    if not file.is_file():
        raise UserCodeError(f"{what}: {file} not found")
    module_name = f"visiondoctor_user_{file.stem}_{abs(hash(str(file.resolve()))) % 10**8}"
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    if module_spec is None or module_spec.loader is None:
        raise UserCodeError(f"{what}: cannot import {file}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    module_spec.loader.exec_module(module)  # the user's own code, run because they named it
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserCodeError(f"{what}: {file} defines no callable {name!r}")
    return fn


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """`path.py:factory` -> the factory (called as factory() or factory(num_classes=N))."""
    return load_callable(spec, "--model-file")


def load_loss(spec: str) -> LossFn:
    return load_callable(spec, "--loss-file")


def build(factory: Callable[..., nn.Module], num_classes: int | None) -> nn.Module:
    """Call the factory, passing num_classes when it accepts it."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes = "num_classes" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    model = factory(num_classes=num_classes) if num_classes is not None and takes else factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model factory returned {type(model).__name__}, not an nn.Module")
    return model


def _first(data: Dataset | Sequence, n: int) -> list:
    return [data[i] for i in range(min(n, len(data)))]


class _LiveDiagnosis(Callback):
    """Rewrites the diagnosis every `every` steps of the monitored training, so it is current while it trains."""

    def __init__(self, write: Callable[[list[Finding]], None], monitor: TrainingMonitor, every: int) -> None:
        self.write, self.monitor, self.every = write, monitor, max(1, every)

    def after_step(self, state: TrainState) -> None:
        if state.step % self.every == 0:
            self.write(self.monitor.findings())


def diagnose(model_factory: Callable[..., nn.Module], data: Dataset | Sequence, *, task: str = "detection",
             val_data: Dataset | Sequence | None = None, num_classes: int | None = None, loss_fn: LossFn | None = None,
             steps: int = 100, batch_size: int = 4, train_config: TrainConfig | None = None, lr: float | None = None,
             threshold: float = DOCTOR_THRESHOLD, overfit_steps: int = 100, probe_images: int = 4,
             out_dir: str | Path | None = None, title: str = "Diagnosis", background_label: bool | None = None,
             device: str = "cpu", seed: int = 0, extra_findings: Sequence[Finding] = (), ignore_index: int = 255,
             void_value: int | None = None, lr_range_steps: int = 32,
             on_update: Callable[[str, list[Finding]], None] | None = None) -> list[Finding]:
    """Run the doctor end to end; returns the findings (errors first) and writes diagnosis.json/.md to out_dir
    after every stage (probe verdicts first, in seconds; then the learning-rate range test, the overfit probe, the
    monitored training as it goes, the evaluation).

    data / val_data: datasets of (image, target) — detection targets {boxes xyxy pixels, labels}, segmentation
    targets label masks. Without val_data the evaluation runs on the training data (and says so).
    train_config: the run's own training settings (optimizer, lr, momentum, weight decay, warm-up, clipping); the
    range test and the monitored training use them, so the run as configured is what is diagnosed (`lr` overrides
    its learning rate). `threshold`: the score the output checks judge at (the doctor's yardstick, 0.5 by default,
    whatever threshold is used for display). `ignore_index`: the label the default segmentation loss ignores;
    `void_value`: the dataset's void value in the masks (default: ignore_index). `on_update(stage, findings)` is
    called after each stage."""
    cfg = train_config or TrainConfig()
    if lr is not None:
        cfg = replace(cfg, lr=lr)
    io = ModelIO(task, loss_fn, ignore_index)
    findings: list[Finding] = list(extra_findings)
    out = Path(out_dir) if out_dir is not None else None

    def record(stage: str, new: Sequence[Finding] = (), transient: Sequence[Finding] = ()) -> list[Finding]:
        """Keep `new`, write everything known so far (with `transient`: the monitor's findings while it trains)."""
        findings.extend(new)
        current = sort_findings(dedupe([*findings, *transient]))
        if out is not None:
            write_diagnosis(current, out, title)
        if on_update is not None:
            on_update(stage, current)
        return current

    torch.manual_seed(seed)
    try:
        model = build(model_factory, num_classes).to(device)
    except Exception as exc:  # noqa: BLE001 - the user's factory failing is a finding, not a crash
        return record("model", [Finding(
            id="model.raised", severity="error", title=f"The model factory raised {type(exc).__name__}: {exc}"[:200],
            evidence={"exception": type(exc).__name__, "message": str(exc)[:400]},
            cause="The model cannot be built as given.", fix="Call the factory yourself to see the error.", where="factory")])
    probe = _first(data, max(2, probe_images))
    images, targets = collate_for(task)(probe)
    static, obs = static_checks(model, images, targets, task=task, num_classes=num_classes, loss_fn=loss_fn,
                                background_label=background_label, ignore_index=ignore_index, void_value=void_value)
    record("probe", static)
    trains = obs is not None and "train" not in obs.errors
    if trains:
        try:
            result = lr_range_test(model, io, images, targets, cfg, steps=lr_range_steps)
            record("lr_range", run_stage("probe", lr_range=result))
        except Exception as exc:  # noqa: BLE001
            record("lr_range", [check_failed("lr_range.lr_range_test", exc)])
        try:
            record("overfit", run_stage("probe", overfit=overfit_one_batch(model, images, targets, io, steps=overfit_steps)))
        except Exception as exc:  # noqa: BLE001
            record("overfit", [check_failed("overfit.overfit_one_batch", exc)])

    monitor = TrainingMonitor(model, every=max(1, steps // 4), threshold=threshold, window=max(5, steps // 5),
                              min_steps_for_outputs=max(1, steps // 2), task=task)
    trainer = None
    if trains:
        live = _LiveDiagnosis(lambda found: record("training", transient=found), monitor, max(1, steps // 4))
        try:
            trainer, _ = train_briefly(model, data, io, steps, batch_size, callbacks=[monitor, live],
                                       val_set=val_data, device=device, seed=seed, config=cfg)
            record("training", monitor.findings())
        except Exception as exc:  # noqa: BLE001
            record("training", [check_failed("training.train_briefly", exc)])
        finally:
            monitor.detach()

    if obs is not None and "eval" not in obs.errors:
        eval_set = val_data if val_data is not None else data
        try:
            found = _evaluate(model, io, eval_set, task, threshold, batch_size, num_classes, out,
                              history=trainer.history if trainer is not None else None, calibration=(images, targets),
                              trained_steps=trainer.state.step if trainer is not None else 0)
        except Exception as exc:  # noqa: BLE001
            found = [check_failed("diagnose.evaluate", exc)]
        if out is not None and (out / SCORE_PLOT).exists():
            for f in [*findings, *found]:
                if f.id in SCORE_PLOT_IDS:
                    f.evidence["plot"] = SCORE_PLOT
        return record("evaluation", found)
    return record("done")


@torch.no_grad()
def _evaluate(model: nn.Module, io: ModelIO, dataset: Dataset | Sequence, task: str, threshold: float,
              batch_size: int, num_classes: int | None, out_dir: Path | None = None,
              history: list[dict[str, Any]] | None = None, calibration: tuple[Any, Any] | None = None,
              trained_steps: int = 0) -> list[Finding]:
    """Evaluate a copy of the model on the whole dataset given and run the evaluation-stage checks on the result.
    `calibration` (a training batch): BatchNorm statistics are re-estimated on it first, so a short run is judged by
    its weights, not by running statistics that lag behind them (small BatchNorm momentum)."""
    collate = collate_for(task)
    model = copy.deepcopy(model)
    if calibration is not None:
        recalibrate_batchnorm(model, io, *to_device(*calibration, model_device(model)))
    device = next(model.parameters()).device
    model.eval()
    all_targets: list[Any] = []
    all_outputs: list[Any] = []
    sizes: list[tuple[int, int]] = []
    first_batch = None
    conf = None
    for start in range(0, len(dataset), batch_size):
        images, targets = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        if first_batch is None:
            first_batch = (images, targets)
        if task == "detection":
            out = io.predict(model, [im.to(device) for im in images])
            all_outputs += [{k: v.cpu() for k, v in o.items()} for o in out]
            all_targets += list(targets)
            sizes += image_sizes(images)
        else:
            main, _ = split_segmentation_outputs(io.predict(model, stack_images(images).to(device)))
            masks = stack_masks(targets)
            conf = conf or ConfusionMatrix(num_classes or int(main.shape[1]), io.ignore_index)
            conf.update(main.argmax(1).cpu(), masks)
    model.train()
    if task == "detection":
        gt, dets = coco_from_batches(all_targets, all_outputs, sizes)
        stats = outputs.measure_detector_outputs(model, first_batch[0], first_batch[1], threshold, io)
        stats.step = trained_steps
        stats.boxes = outputs.box_statistics(all_outputs, sizes, all_targets)  # every evaluated image
        findings = run_stage("evaluation", task=task, history=history, stats=stats,
                             consistency=score_iou_consistency(gt, dets, 0.05), tide=tide_errors(gt, dets))
        if out_dir is not None and any(f.id in SCORE_PLOT_IDS for f in findings):
            write_score_plot(stats, out_dir)
        return findings
    metrics = conf.compute(total_images=len(dataset)) if conf is not None else None
    return run_stage("evaluation", task=task, history=history, metrics=metrics)


def write_score_plot(stats: outputs.OutputStats, out_dir: Path) -> None:
    """plots/doctor_fg_scores.png: the foreground-score histogram with the threshold drawn in."""
    if not stats.fg_histogram:
        return
    edges = [i / len(stats.fg_histogram) for i in range(len(stats.fg_histogram) + 1)]
    png = score_histogram(edges, stats.fg_histogram, stats.threshold,
                          f"Foreground score per {'location' if stats.source != 'detections' else 'detection'}")
    write_bytes_atomic(out_dir / SCORE_PLOT, png)
