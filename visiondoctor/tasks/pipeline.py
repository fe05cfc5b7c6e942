"""One run pipeline for every task: data -> model -> Trainer (+ the doctor) -> evaluation -> report.

A task (detection, segmentation, a feature's task such as text queries) is described once by a
`Task` subclass: how it loads its data, builds its datasets and collation, its loss when the model
returns none, how it evaluates, its primary metric, and what it adds after an evaluation. Then
`train(task, cfg)`, `evaluate_run(run, split)` and `load_run_model(run)` serve all of them,
distributed runs (torchrun: rank 0 alone writes the run directory) and callbacks included.

The task of a config comes from the model registry (`ModelEntry.task`), never from a model name:
`task_for(cfg)`. Tasks register with `@register_task`; those of the tasks/ package are found by
the registry, a feature package registers its own when it is imported.

What a run starts from is recorded so any later command rebuilds the same model: `weights.json`
(which weights were loaded: whole-model, backbone, a local file, or none and why) and, for
detectors with anchors or default boxes, `priors.json` (their best possible recall on the training
boxes before and after the fit, and the refitted generator arguments that `load_run_model` applies; when the
fit alone leaves them short, the input the run changed to - a finer level, a larger model.image_size, never a
setting the user gave - and config.yaml is written as the model was built).
A new run never writes into an older one's folder (`name-2`, ... unless resuming or `exist_ok`),
and an evaluation of a split other than val writes its files under the split's names (rundir.split_file).
"""
from __future__ import annotations

import logging
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from visiondoctor.config import Config, ModelConfig, load_config, save_config
from visiondoctor.data.loading import loader_workers
from visiondoctor.data.samples import CategoryMap
from visiondoctor.data.synth import ensure_synthetic
from visiondoctor.engine import distributed as dist_utils
from visiondoctor.engine.callbacks import Callback
from visiondoctor.engine.checkpoint import load_latest
from visiondoctor.engine.tensorboard import TensorBoardLogger
from visiondoctor.engine.trainer import (
    LossFn,
    Trainer,
    TrainResult,
    default_loss_fn,
    resolve_device,
)
from visiondoctor.evaluation.speed import count_flops, example_image
from visiondoctor.findings import Finding
from visiondoctor.models.anchor_fit import (
    COVERAGE_TARGET,
    InputOption,
    apply_priors,
    finer_level_kwargs,
    fit_input_to_priors,
    fit_model_priors,
    larger_input_sizes,
    native_input_size,
)
from visiondoctor.models.detection import load_weights_file, resolve_weights
from visiondoctor.models.registry import available_models, get_entry
from visiondoctor.registry import Registry
from visiondoctor.report.html import build_report as build_report_html
from visiondoctor.rundir import VAL_SPLIT, RunDir, split_file, unused_run_dir
from visiondoctor.tasks.diagnosis import RunDiagnosis, data_findings

log = logging.getLogger(__name__)
# The report's worst-first galleries (report/gallery.py, report/segmentation_sections.py): TensorBoard shows them too.
PREDICTION_PLOTS = ("predictions.png", "segmentation_worst.png")


class TaskData(Protocol):
    """What a task's data offers the pipeline (DetectionData, SegmentationData)."""

    root: Path

    def split(self, name: str) -> Any: ...
    def categories(self) -> dict[str, Any]: ...
    def summary(self) -> dict[str, Any]: ...


def split_images(data: TaskData) -> dict[str, list[Path]]:
    """{split: its image files} for the splits the data has (train, val, test)."""
    found = {}
    for name in ("train", "val", "test"):
        try:
            found[name] = [record.path for record in data.split(name).records]
        except FileNotFoundError:  # no such split
            continue
    return found


@dataclass
class Datasets:
    """The torch datasets of one run: augmented training, validation (None: no validation losses) and
    the un-augmented training samples the doctor probes, with the collate function they share."""

    train: Dataset
    val: Dataset | None
    probe: Dataset
    collate: Callable[[list], tuple[Any, Any]]


class Task:
    """How one task trains, evaluates and reports. Subclasses set the class attributes and override
    the methods that differ; `options` are the task's own run options (e.g. a segmentation loss file)."""

    name: ClassVar[str]
    contract: ClassVar[str] = "detection"  # the model contract (visiondoctor.models.contract)
    primary_metric: ClassVar[str] = "map"

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.option_names())
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {sorted(unknown)}")
        self.options = options

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ()

    def prepare_config(self, cfg: Config) -> Config:
        """The config as this task trains it (defaults it fills in are saved in config.yaml)."""
        return cfg

    def load_data(self, cfg: Config, categories: dict[str, Any] | None = None) -> TaskData:
        """The splits; `categories` (a finished run's categories.json) fixes the label space to the run's."""
        raise NotImplementedError

    def num_classes(self, categories: dict[str, Any]) -> int:
        raise NotImplementedError

    def build_model(self, cfg: Config, categories: dict[str, Any], run: RunDir | None) -> nn.Module:
        raise NotImplementedError

    def datasets(self, cfg: Config, data: TaskData) -> Datasets:
        raise NotImplementedError

    def loss_fn(self, cfg: Config, data: TaskData) -> LossFn:
        """The loss the Trainer calls: the model's own losses unless a task says otherwise."""
        return default_loss_fn

    def data_context(self, data: TaskData, categories: dict[str, Any]) -> dict[str, Any]:
        """What the doctor's data-stage checks receive (doctor/checks STAGES["data"]): every split's image
        files; a task adds its own (detection: the training index and label map)."""
        return {"split_images": split_images(data)}

    def data_findings(self, data: TaskData, categories: dict[str, Any]) -> list[Finding]:
        """The doctor's data-stage findings on the dataset, before training."""
        return data_findings(**self.data_context(data, categories))

    def evaluate(self, model: nn.Module, data: TaskData, split: str, cfg: Config, device: torch.device,
                 run: RunDir | None = None) -> dict[str, Any]:
        """Metrics on `split` (its whole split unless eval.max_images); with `run`, writes the
        evaluation files the report and the doctor read."""
        raise NotImplementedError

    def after_evaluation(self, run: RunDir, model: nn.Module, data: TaskData, cfg: Config, device: torch.device,
                         split: str) -> None:
        """What a task adds once a run's evaluation is written (an analysis file of its own)."""


TASKS: Registry[type[Task]] = Registry("task", "visiondoctor.tasks")


def register_task(cls: type[Task]) -> type[Task]:
    TASKS.add(cls.name, cls)
    return cls


def task_name(cfg: Config) -> str:
    """The task that trains cfg's model: the model registry says; `task: segmentation` with the default
    (detection) model means the segmentation task with its own default model."""
    entry = get_entry(cfg.model.name)
    if cfg.task == "segmentation" and entry.task != "segmentation":
        if cfg.model.name == ModelConfig().name:
            return "segmentation"
        raise ValueError(f"model {cfg.model.name!r} is a {entry.task} model; segmentation models: "
                         f"{', '.join(available_models('segmentation'))}")
    return entry.task


def task_for(cfg: Config, **options: Any) -> Task:
    name = task_name(cfg)
    if name not in TASKS:
        raise ValueError(f"no task {name!r} is registered (model {cfg.model.name!r}); import the feature package "
                         f"that defines it (e.g. visiondoctor.{name})")
    return TASKS.get(name)(**options)


# ----- training ---------------------------------------------------------------------------------------

def prepare_data_files(cfg: Config) -> None:
    """Generate the config's synthetic dataset once (rank 0 under torchrun, the others wait)."""
    if cfg.data.synth and not cfg.data.path and dist_utils.is_main():
        ensure_synthetic(cfg)
    dist_utils.barrier()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


def fit_model(model: nn.Module, datasets: Datasets, cfg: Config, run_dir: Path | None, *, loss_fn: LossFn,
              callbacks: Sequence[Callback] = (), evaluate_fn: Callable[[nn.Module], dict[str, Any]] | None = None,
              primary_metric: str = "map", resume: bool = False, train_config: Any = None) -> tuple[Trainer, TrainResult]:
    """The Trainer on a task's datasets (also for one phase of a class-incremental run)."""
    trainer = Trainer(model, datasets.train, train_config or cfg.train, collate_fn=datasets.collate, loss_fn=loss_fn,
                      evaluate_fn=evaluate_fn, val_set=datasets.val, primary_metric=primary_metric,
                      callbacks=callbacks, run_dir=run_dir,
                      workers=loader_workers(cfg.data, datasets.train))
    if resume and not trainer.resume():
        log.warning("--resume: no usable checkpoint in %s; starting from scratch", Path(run_dir or ".") / "checkpoints")
    return trainer, trainer.fit()


def write_train_result(run: RunDir, result: TrainResult, trainer: Trainer) -> None:
    run.write_json("train_result.json", {"steps": result.steps, "epochs": result.epochs_completed,
                                         "elapsed_s": round(result.elapsed_s, 1), "stopped_by": result.stopped_by,
                                         "callback_errors": trainer.state.extra.get("callback_errors", [])})


def claim_run_name(cfg: Config, reuse: bool = False) -> Config:
    """The config with the name of a folder no earlier run wrote (`name`, else `name-2`, `name-3`, ...); with
    `reuse` (resume, exist_ok) the name as given. Rank 0 decides, every rank gets its answer."""
    if reuse:
        return cfg
    path = unused_run_dir(cfg.run_path) if dist_utils.is_main() else None
    path = dist_utils.broadcast_object(path)
    if path != cfg.run_path:
        log.info("%s exists: this run is written to %s (--exist-ok to reuse the folder, --resume to continue it)",
                 cfg.run_path, path)
    return replace(cfg, name=path.name)


def with_weights_flags(cfg: Config, pretrained: bool, pretrained_backbone: bool) -> Config:
    return replace(cfg, model=replace(cfg.model, pretrained=pretrained, pretrained_backbone=pretrained_backbone,
                                      weights=""))


def build_run_model(task: Task, cfg: Config, categories: dict[str, Any],
                       run: RunDir | None) -> tuple[nn.Module, dict[str, Any]]:
    """The task's model with the weights the config asks for: a local file (model.weights), else the best
    pretrained weights that can be had (falling back to none with one log line). Returns weights.json's record."""
    if cfg.model.weights:
        model = task.build_model(with_weights_flags(cfg, False, False), categories, run)
        return model, load_weights_file(model, cfg.model.weights)
    return resolve_weights(lambda p, b: task.build_model(with_weights_flags(cfg, p, b), categories, run),
                           cfg.model.name, cfg.model.pretrained, cfg.model.pretrained_backbone)


def rebuild_run_model(task: Task, cfg: Config, categories: dict[str, Any], run: RunDir | None,
                      first: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The model built again (for another input) with the weights the first build found, `first` being its
    weights.json record: no second download attempt nor fallback line. The record stays the first's (what was
    asked for, what was used and why), with the tensors this model did not get from them."""
    if cfg.model.weights or first.get("used") not in ("pretrained", "pretrained_backbone", "none"):
        return build_run_model(task, cfg, categories, run)
    used = first["used"]
    model, weights = build_run_model(task, with_weights_flags(cfg, used == "pretrained", used == "pretrained_backbone"),
                                     categories, run)
    return model, {**first, "not_loaded": weights.get("not_loaded", [])}


def prepare_model(task: Task, cfg: Config, data: TaskData, categories: dict[str, Any], run: RunDir,
                  resume: bool = False) -> tuple[Config, nn.Module, dict[str, Any], dict[str, Any] | None]:
    """The run's model with its weights and its priors judged on the training data (prepare_priors), and the
    config it is built from: the configured one, or one whose input the prior fit changed (a finer level, a larger
    model.image_size), as priors.json records. A resumed run that has priors.json is rebuilt as it records.
    Returns (config, model, weights.json's record, priors.json's record or None)."""
    recorded = run.read_json(run.priors.name) if resume and run.priors.exists() else None
    if recorded is not None:
        resumed = with_prior_input(cfg, recorded)  # priors.json wins: the checkpoints were trained on that model
        if resumed is not cfg:
            log.info("resuming with the input priors.json records: %s", ", ".join(recorded["input"]["chosen"]["changes"]))
        cfg = resumed
    model, weights = build_run_model(task, cfg, categories, run)
    if recorded is not None:
        apply_priors(model, recorded)
        return cfg, model, weights, recorded
    priors = prepare_priors(task, model, data, cfg, run, categories)
    chosen = with_prior_input(cfg, priors)
    if chosen is not cfg:  # every rank builds the model of the chosen input
        cfg = chosen
        model, weights = rebuild_run_model(task, cfg, categories, run, weights)
    if priors is not None:
        apply_priors(model, priors)  # (rank 0's model, when not rebuilt, has them already: applying is idempotent)
    return cfg, model, weights, priors


def with_prior_input(cfg: Config, record: dict[str, Any] | None) -> Config:
    """cfg with the input priors.json's search chose (model.image_size, model.kwargs); cfg itself when none."""
    chosen = ((record or {}).get("input") or {}).get("chosen")
    if not chosen:
        return cfg
    if (chosen["image_size"], chosen["kwargs"]) == (cfg.model.image_size, cfg.model.kwargs):
        return cfg
    return replace(cfg, model=replace(cfg.model, image_size=int(chosen["image_size"]), kwargs=dict(chosen["kwargs"])))


def prepare_priors(task: Task, model: nn.Module, data: TaskData, cfg: Config, run: RunDir,
                   categories: dict[str, Any]) -> dict[str, Any] | None:
    """The priors (anchors, default boxes) of a detector judged on the training boxes and refitted below the
    threshold (model.auto_priors); when even the fit leaves them short of COVERAGE_TARGET, the input is searched
    (search_prior_input). Rank 0 measures, every rank gets its record (None when the model has no priors or the
    task no boxes); the caller applies it."""
    if task.contract != "detection":
        return None
    record = None
    if dist_utils.is_main():
        records = data.split("train").records
        try:
            record = fit_model_priors(model, records, cfg.model.image_size, refit=cfg.model.auto_priors)
        except Exception as exc:  # a model the probe step cannot run keeps its priors; the run goes on
            log.warning("priors not measured (%s: %s): kept as built", exc.__class__.__name__, exc)
            record = {"refit": False, "note": f"not measured ({exc.__class__.__name__}: {exc}): priors kept as built"}
        if record is not None and "bpr_before" in record:
            log.info("%s (%d training boxes, IoU %.1f, in the model's %d px input)", record["note"],
                     record["num_boxes"], record["iou_threshold"], cfg.model.image_size)
            if cfg.model.auto_priors and record["bpr_after"] < COVERAGE_TARGET:
                try:
                    record = search_prior_input(task, cfg, categories, run, records, record)
                except Exception as exc:  # the input search is an improvement, never a reason to stop the run
                    log.warning("input search failed (%s: %s): input kept", exc.__class__.__name__, exc)
    return dist_utils.broadcast_object(record)


def search_prior_input(task: Task, cfg: Config, categories: dict[str, Any], run: RunDir, records: Sequence,
                       record: dict[str, Any]) -> dict[str, Any]:
    """The priors' record with the input search added (priors.json's "input"): the options the user left open —
    a finer level where the model's builder offers one (model.kwargs.finest_stride), larger inputs up to the
    images' own size (model.image_size) — measured cheapest first; the first whose fitted priors reach
    COVERAGE_TARGET replaces the record's fit. Settings the user gave are kept and named. One log line."""
    start = InputOption(cfg.model.image_size, dict(cfg.model.kwargs))
    kept = [key for key in ("model.image_size", "model.kwargs.finest_stride") if cfg.is_user_set(key)]
    sizes = [] if "model.image_size" in kept else larger_input_sizes(start.image_size, native_input_size(records))
    variants = [] if "model.kwargs.finest_stride" in kept else \
        finer_level_kwargs(get_entry(cfg.model.name).builder, start.kwargs)
    options = [InputOption(size, kwargs) for size in [start.image_size, *sizes] for kwargs in [start.kwargs, *variants]]

    def build(option: InputOption) -> nn.Module:
        model_cfg = replace(cfg.model, image_size=option.image_size, kwargs=option.kwargs)
        with torch.random.fork_rng(devices=[]):  # the run's random state stays as if no option had been built
            return task.build_model(with_weights_flags(replace(cfg, model=model_cfg), False, False), categories, run)

    section, chosen = fit_input_to_priors(build, records, start, record["bpr_after"], options[1:], forward_flops,
                                          kept=kept)
    log.info("%s", section["note"])
    if chosen is None:
        return {**record, "input": section}
    return {**chosen, "bpr_before": record["bpr_before"], "input": section,
            "positives_per_box_before": record.get("positives_per_box_before"),
            "note": f"{chosen['note']} (after the input change)"}


def forward_flops(model: nn.Module, image_size: int) -> float | None:
    """FLOPs of one eval forward of `model` on one image_size x image_size image (the options' cost measure)."""
    return count_flops(model.eval(), [example_image(image_size)])


def train(task: Task, cfg: Config, resume: bool = False, callbacks: Sequence[Callback] = (),
          exist_ok: bool = False) -> RunDir:
    """Train, evaluate on the validation split, diagnose, and write the report (rank 0 writes the run).
    A new run goes to a folder no earlier run used unless `resume` or `exist_ok`."""
    dist_utils.init()
    cfg = claim_run_name(task.prepare_config(cfg), reuse=resume or exist_ok)
    seed_everything(cfg.train.seed)
    main = dist_utils.is_main()
    run = RunDir.create(cfg.run_path) if main else RunDir(cfg.run_path)
    prepare_data_files(cfg)
    data = task.load_data(cfg)
    categories = data.categories()
    if main:
        run.write_json("categories.json", categories)
        run.write_json("data_summary.json", data.summary())
    cfg, model, weights, priors = prepare_model(task, cfg, data, categories, run, resume)
    if main:
        save_config(cfg, run.config)  # as the model was built: the prior fit may have changed its input
        if not (resume and run.weights.exists()):  # a resumed run keeps the record of what it started from
            run.write_json(run.weights.name, weights)
        if priors is not None:
            run.write_json(run.priors.name, priors)
    device = resolve_device(cfg.train.device)
    sets = task.datasets(cfg, data)
    doctor = RunDiagnosis(model, cfg, task.num_classes(categories), bool(categories.get("background")),
                          int(categories.get("ignore_index", 255)))
    doctor.before_training(model, sets.probe, sets.collate, task.data_findings(data, categories))
    trainer, result = fit_model(
        model, sets, cfg, run.path, loss_fn=task.loss_fn(cfg, data),
        callbacks=[*doctor.callbacks, *callbacks],
        evaluate_fn=lambda m: task.evaluate(m, data, "val", cfg, device), primary_metric=task.primary_metric,
        resume=resume)
    if main:
        try:
            final = best_weights(run, trainer.eval_model, device)
            task.evaluate(final, data, "val", cfg, device, run)
            findings = doctor.after_evaluation(run, task.primary_metric)
            task.after_evaluation(run, final, data, cfg, device, "val")
            write_train_result(run, result, trainer)
            build_report(run)
            if trainer.tensorboard is not None:
                evaluation_to_tensorboard(trainer.tensorboard, run, findings, result.steps)
        finally:
            if trainer.tensorboard is not None:
                trainer.tensorboard.close()
    dist_utils.barrier()
    return run


def evaluation_to_tensorboard(board: TensorBoardLogger, run: RunDir, findings: Sequence[dict[str, Any]],
                              step: int) -> None:
    """The doctor's findings (a table, `doctor/findings`) and the report's worst-first predictions (images,
    `predictions/<i>`) in the run's TensorBoard, at its last step."""
    board.add_findings(findings, step)
    board.add_images("predictions", [path for path in (run.plots / name for name in PREDICTION_PLOTS)
                                     if path.is_file()], step)


# ----- a finished run ---------------------------------------------------------------------------------

def best_weights(run: RunDir, model: nn.Module, device: torch.device) -> nn.Module:
    """The best checkpoint by the primary validation metric when one was saved; else the final weights.
    In the default memory layout: a model trained in channels_last is evaluated as `eval`, `predict`
    and `export` rebuild it, so the run's predictions are theirs to the last bit."""
    found = load_latest(run.checkpoints / "best", map_location=device)
    if found is not None:
        model.load_state_dict(found[1]["model"])
    return model.to(memory_format=torch.contiguous_format)


def run_task(run: RunDir) -> tuple[Task, Config, dict[str, Any]]:
    """A finished run's task, resolved config and categories.json."""
    cfg = load_config(run.config)
    return task_for(cfg), cfg, run.read_json("categories.json")


def load_run_model(run: RunDir, device: torch.device) -> tuple[nn.Module, Config, Any]:
    """The run's best (else newest) weights in the model its config describes, in eval mode; with its
    config and its label space (categories.json as a CategoryMap)."""
    task, cfg, categories = run_task(run)
    model = task.build_model(with_weights_flags(cfg, False, False), categories, run)
    if run.priors.exists():
        apply_priors(model, run.read_json(run.priors.name))  # the priors the run was trained with
    found = load_latest(run.checkpoints / "best", map_location=device) or load_latest(run.checkpoints, device)
    if found is None:
        raise FileNotFoundError(f"{run.checkpoints}: no usable checkpoint")
    model.load_state_dict(found[1]["model"])
    return model.to(device).eval(), cfg, CategoryMap.from_dict(categories)


def evaluate_run(run_dir: str | Path, split: str = "val", max_images: int = 0, data_path: str | Path | None = None,
                 device: str = "auto", batch_size: int | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run on a split (the whole split unless max_images), redo the run-file
    checks of its diagnosis for that split, and rebuild its report. `data_path`: evaluate on that
    dataset's split instead of the run's own (it must have the run's classes, in the same order). The
    validation split's files keep their names; another split's are written under its own
    (metrics_test.json, diagnosis_test.json, ...), so the validation files are left as they were."""
    run = RunDir.open(run_dir)
    device = resolve_device(device)
    task, _, categories = run_task(run)
    model, cfg, _ = load_run_model(run, device)
    cfg = replace(cfg, eval=replace(cfg.eval, max_images=max_images, split=split),
                  train=replace(cfg.train, batch_size=batch_size or cfg.train.batch_size))
    if data_path is not None:
        cfg = replace(cfg, data=replace(cfg.data, path=str(data_path), synth="", format="auto"))
    data = task.load_data(cfg, categories)
    found = data.categories()
    if data_path is not None and any(found.get(k) != categories[k] for k in ("names", "num_classes") if k in categories):
        raise ValueError(f"{data_path}: its classes {found.get('names')} differ from the run's {categories.get('names')}; "
                         "a run is evaluated only on data with the same classes in the same order")
    with split_files(run, split) as target:
        metrics = task.evaluate(model, data, split, cfg, device, target)
        doctor = RunDiagnosis(model, replace(cfg, train=replace(cfg.train, monitors=False)),
                              task.num_classes(categories), bool(categories.get("background")),
                              int(categories.get("ignore_index", 255)))
        doctor.keep_training_findings(run)
        doctor.after_evaluation(target, task.primary_metric)
        task.after_evaluation(target, model, data, cfg, device, split)
    build_report(run)
    return metrics


@contextmanager
def split_files(run: RunDir, split: str) -> Iterator[RunDir]:
    """Where an evaluation of `split` writes: the run itself for the validation split; for any other, a scratch
    copy of the run's top-level files (what the evaluation, the doctor and a task's analysis read), whose new or
    rewritten files are then moved into the run under the split's names (rundir.split_file), subfolders kept.
    Every writer thereby names its files by split without knowing about splits. (An evaluation writes the same
    files whatever the split, so no reader in the scratch copy sees a validation file as the split's.)"""
    if split == VAL_SPLIT:
        yield run
        return
    with tempfile.TemporaryDirectory(dir=run.path, prefix=f".eval-{split}-") as tmp:
        scratch = Path(tmp) / run.path.name  # named as the run: files that name their run (diagnosis.md) read right
        scratch.mkdir()
        originals = {}
        for path in run.path.iterdir():
            if path.is_file():
                originals[Path(path.name)] = _signature(Path(shutil.copy2(path, scratch / path.name)))
        yield RunDir(scratch)
        for path in sorted(p for p in scratch.rglob("*") if p.is_file()):
            relative = path.relative_to(scratch)
            if originals.get(relative) != _signature(path):
                target = run.path / relative.parent / split_file(relative.name, split)
                target.parent.mkdir(parents=True, exist_ok=True)
                path.replace(target)


def _signature(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def build_report(run: RunDir) -> Path:
    return build_report_html(run.path)

