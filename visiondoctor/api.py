"""The Python API: what the command line does, from a notebook or a script.

    import visiondoctor as vd

    run = vd.train(data="path/to/dataset", model="ssdlite320_mobilenet_v3_large", image_size=320,
                   epochs=30, name="my_run")             # -> runs/my_run/ (report.html, diagnosis.json, ...)
    metrics = vd.evaluate(run, split="test")            # COCO metrics (detection) or mIoU (segmentation)
    outputs = vd.predict(run, "images/")                # annotated images + predictions.json
    findings = vd.diagnose(model=my_factory, data="path/to/dataset", steps=100)

Every function takes what its command takes; the README's "Python API" section is a complete
example (the test suite runs it as written). Importing this module imports the feature packages, so
their tasks (early exit, class-incremental, text queries) and report sections are registered.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

import visiondoctor.early_exit  # noqa: F401 - importing a feature registers its task and report sections
import visiondoctor.incremental  # noqa: F401
import visiondoctor.text_query  # noqa: F401
from visiondoctor.config import Config, load_config
from visiondoctor.doctor.api import Doctor
from visiondoctor.doctor.diagnose import diagnose as diagnose_model
from visiondoctor.doctor.diagnose import load_factory, load_loss
from visiondoctor.engine.callbacks import Callback, TrainState
from visiondoctor.engine.trainer import resolve_device
from visiondoctor.findings import Finding
from visiondoctor.models.detection import resolve_weights
from visiondoctor.models.registry import create_model
from visiondoctor.rundir import RunDir
from visiondoctor.tasks import pipeline
from visiondoctor.tasks.video import predict_media

__all__ = ["Callback", "Config", "Doctor", "Finding", "RunDir", "TrainState", "build_config", "diagnose", "evaluate",
           "predict", "train"]

# keyword argument -> the config key it sets (the command line's flags set the same keys)
CONFIG_KEYS = {"task": "task", "data": "data.path", "format": "data.format", "model": "model.name", "name": "name",
               "epochs": "train.epochs", "batch_size": "train.batch_size", "image_size": "model.image_size",
               "max_minutes": "train.max_minutes", "device": "train.device", "synth": "data.synth",
               "output_dir": "output_dir"}

RunLike = RunDir | str | Path


def build_config(config: str | Path | None = None, overrides: Sequence[str] = (), **values: Any) -> Config:
    """A Config from a YAML file or preset name (`config`), the keyword values of CONFIG_KEYS (None:
    not set), then dotted `overrides` ("train.lr=0.01"), which win: the command line's order. String
    values are taken literally (a run named "yes" or a path with ": " stays a string)."""
    unknown = set(values) - set(CONFIG_KEYS)
    if unknown:
        raise TypeError(f"unknown argument(s) {sorted(unknown)}; known: {sorted(CONFIG_KEYS)} (other config keys: "
                        "overrides=['section.key=value'])")
    settings = [f"{CONFIG_KEYS[k]}={json.dumps(str(v)) if isinstance(v, (str, Path)) else v}"  # JSON strings are YAML
                for k, v in values.items() if v is not None]
    return load_config(config, [*settings, *overrides])


def _run_folder(run: RunLike) -> Path:
    return run.path if isinstance(run, RunDir) else Path(run)


def train(data: str | Path | None = None, model: str | None = None, *, task: str | None = None,
          image_size: int | None = None, epochs: int | None = None, name: str | None = None,
          config: str | Path | None = None, overrides: Sequence[str] = (), callbacks: Sequence[Callback] = (),
          resume: bool = False, batch_size: int | None = None, output_dir: str | Path | None = None,
          device: str | None = None, synth: str | None = None, max_minutes: float | None = None,
          exist_ok: bool = False, **options: Any) -> RunDir:
    """Train, evaluate on the validation split, diagnose and write the report: `visiondoctor train`.

    data: a dataset folder or annotation file (COCO, VOC, YOLO, image/mask folders), or None with
    `synth` ("shapes", "streets", "sketches") to generate one; model: a registered name
    (`visiondoctor models`), its task unless `task` says "segmentation"; config: a YAML file or a
    shipped preset ("demo"), which the keyword arguments and then `overrides` ("train.lr=0.01")
    change; callbacks: engine Callbacks (visiondoctor.engine.callbacks) called during training, e.g.
    to log to your tracker; options: the task's own (segmentation: loss_file, anomaly_class).
    Returns the run directory: runs/<name>/ (unless output_dir), or runs/<name>-2/, -3, ... when that
    exists and neither resume nor exist_ok is set."""
    cfg = build_config(config, overrides, data=data, model=model, task=task, image_size=image_size, epochs=epochs,
                       name=name, batch_size=batch_size, output_dir=output_dir, device=device, synth=synth,
                       max_minutes=max_minutes)
    return pipeline.train(pipeline.task_for(cfg, **options), cfg, resume=resume, callbacks=callbacks,
                          exist_ok=exist_ok)


def evaluate(run: RunLike, split: str = "val", max_images: int = 0, data: str | Path | None = None, *,
             device: str = "auto", batch_size: int | None = None) -> dict[str, Any]:
    """Evaluate a finished run on `split` (the whole split unless max_images) and rebuild its report:
    `visiondoctor eval`. data: another dataset with the run's classes to evaluate on instead of the
    run's own. Returns the metrics (also written to the run's metrics.json)."""
    return pipeline.evaluate_run(_run_folder(run), split=split, max_images=max_images, data_path=data, device=device,
                                 batch_size=batch_size)


def predict(run: RunLike, source: str | Path, threshold: float = 0.5, out: str | Path | None = None, *,
            batch_size: int = 1, device: str = "auto", runtime: str = "pytorch") -> list[Path]:
    """Run a finished run's model on an image, a folder or a video: `visiondoctor predict`.

    Detection draws the boxes scoring at least `threshold`; segmentation blends the mask of each
    class over the image (pixels whose top class is less likely than `threshold` stay uncoloured).
    Images go to `out` (default <run>/predict) with predictions.json; a video becomes an annotated
    video with a JSON of every frame. Returns what was written (the folder, the videos)."""
    return predict_media(_run_folder(run), source, out, threshold=threshold, runtime=runtime, batch_size=batch_size,
                         device=device)


def _factory(model: str | Callable[..., nn.Module] | None, cfg: Config) -> Callable[..., nn.Module]:
    """The model to diagnose as a factory of num_classes: the user's, a path.py:function, or the config's
    registered model (by name)."""
    if callable(model):
        return model
    if model is not None and ".py:" in model:  # path.py:function, the --model-file form
        return load_factory(model)

    def registered(num_classes: int) -> nn.Module:  # with the best weights that can be had, as a run's model
        return resolve_weights(
            lambda p, b: create_model(cfg.model.name, num_classes=num_classes, image_size=cfg.model.image_size,
                                      pretrained=p, pretrained_backbone=b, **cfg.model.kwargs),
            cfg.model.name, cfg.model.pretrained, cfg.model.pretrained_backbone)[0]

    return registered


def diagnose(model: str | Callable[..., nn.Module] | None = None, data: str | Path | Dataset | Sequence | None = None, *,
             task: str | None = None, steps: int = 100, loss: str | Callable[..., Any] | None = None,
             val_data: Dataset | Sequence | None = None, num_classes: int | None = None,
             config: str | Path | None = None, overrides: Sequence[str] = (), image_size: int | None = None,
             synth: str | None = None, out: str | Path | None = None, device: str = "auto",
             batch_size: int = 8, overfit_steps: int = 100,
             on_update: Callable[[str, list[Finding]], None] | None = None) -> list[Finding]:
    """The whole doctor on a model: static and probe checks, the overfit-one-batch probe, a short
    monitored training and an evaluation: `visiondoctor diagnose`. Returns the findings, errors first,
    and writes diagnosis.json / diagnosis.md into `out` (default runs/<name>-diagnosis for a dataset
    folder; nothing is written for in-memory data without `out`).

    model: a factory returning an nn.Module (called with num_classes=N when it takes it), a
    registered model name, or "path.py:function" (None: the config's model); data: a dataset folder (or None with `synth`),
    read as `train` reads it, or in-memory (image, target) pairs (a torch Dataset or a list; then
    give num_classes and, for segmentation, task="segmentation"); loss: fn(outputs, targets) -> loss,
    or "path.py:function", for models that return raw outputs; steps: the monitored training's
    length; overfit_steps: the overfit-one-batch probe's; on_update(stage, findings): called each time
    diagnosis.json is rewritten (after the static and probe checks, during and after training)."""
    name = model if isinstance(model, str) and ".py:" not in model else None
    common: dict[str, Any] = {"steps": steps, "overfit_steps": overfit_steps, "batch_size": batch_size,
                              "device": str(resolve_device(device)),
                              "loss_fn": load_loss(loss) if isinstance(loss, str) else loss,
                              "title": f"Diagnosis of {getattr(model, '__name__', model)}", "on_update": on_update}
    if data is not None and not isinstance(data, (str, Path)):  # in-memory samples
        cfg = build_config(config, overrides, model=name, image_size=image_size)
        return diagnose_model(_factory(model, cfg), data, task=task or "detection", val_data=val_data,
                              num_classes=num_classes, out_dir=out, seed=cfg.train.seed, train_config=cfg.train,
                              **common)
    cfg = build_config(config, overrides, data=data, synth=synth, task=task, image_size=image_size, model=name)
    run_task = pipeline.task_for(cfg)
    cfg = run_task.prepare_config(cfg)
    pipeline.prepare_data_files(cfg)
    task_data = run_task.load_data(cfg)
    categories = task_data.categories()
    sets = run_task.datasets(cfg, task_data)
    background = bool(categories.get("background")) if run_task.contract == "detection" else None
    return diagnose_model(_factory(model, cfg), sets.probe, task=run_task.contract, val_data=sets.val,
                          num_classes=run_task.num_classes(categories), background_label=background,
                          extra_findings=run_task.data_findings(task_data, categories), seed=cfg.train.seed,
                          train_config=cfg.train, ignore_index=int(categories.get("ignore_index", 255)),
                          out_dir=out or Path(cfg.output_dir) / f"{cfg.name}-diagnosis", **common)
