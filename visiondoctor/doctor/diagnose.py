"""`diagnose`: the whole doctor on a model factory and data — static and probe checks, the
overfit-one-batch probe, a short monitored training (the engine's Trainer), an evaluation — and
diagnosis.json / diagnosis.md in `out_dir`.

A user's model comes in through `load_factory("path.py:factory")` (the file is executed only
because the user named it); the factory returns an nn.Module following torchvision conventions
and may take `num_classes`. A segmentation loss comes through `--loss-file path.py:fn`,
`fn(outputs, targets) -> loss tensor or {name: loss}`.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from visiondoctor.doctor.checks import consistency, evaluation, outputs
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.model_io import LossFn, ModelIO, image_sizes, split_segmentation_outputs, stack_images, stack_masks
from visiondoctor.doctor.monitor import TrainingMonitor
from visiondoctor.doctor.overfit import check_overfit, overfit_one_batch
from visiondoctor.doctor.runner import check_failed, dedupe, run_check, sort_findings
from visiondoctor.doctor.static import static_checks
from visiondoctor.doctor.training import collate_for, train_briefly
from visiondoctor.rundir import write_bytes_atomic, write_json_atomic

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


def diagnose(model_factory: Callable[..., nn.Module], data: Dataset | Sequence, *, task: str = "detection",
             val_data: Dataset | Sequence | None = None, num_classes: int | None = None, loss_fn: LossFn | None = None,
             steps: int = 100, batch_size: int = 4, lr: float = 1e-3, threshold: float = 0.5, overfit_steps: int = 100,
             probe_images: int = 4, out_dir: str | Path | None = None, title: str = "Diagnosis",
             background_label: bool | None = None, device: str = "cpu", seed: int = 0,
             extra_findings: Sequence[Finding] = ()) -> list[Finding]:
    """Run the doctor end to end; returns the findings (errors first) and writes diagnosis.json/.md to out_dir.

    data / val_data: datasets of (image, target) — detection targets {boxes xyxy pixels, labels}, segmentation
    targets label masks. Without val_data the evaluation runs on the training data (and says so)."""
    io = ModelIO(task, loss_fn)
    findings: list[Finding] = list(extra_findings)
    torch.manual_seed(seed)
    model = build(model_factory, num_classes).to(device)
    probe = _first(data, max(2, probe_images))
    images, targets = collate_for(task)(probe)

    static, _ = static_checks(model, images, targets, task=task, num_classes=num_classes, loss_fn=loss_fn,
                              background_label=background_label)
    findings += static

    try:
        result = overfit_one_batch(model, images, targets, io, steps=overfit_steps)
        findings += check_overfit(result, len(probe))
    except Exception as exc:  # noqa: BLE001
        findings.append(check_failed("overfit.overfit_one_batch", exc))

    monitor = TrainingMonitor(model, every=max(1, steps // 4), threshold=threshold, window=max(5, steps // 5),
                              min_steps_for_outputs=max(1, steps // 2), task=task)
    trainer = None
    try:
        trainer, _ = train_briefly(model, data, io, steps, batch_size, lr, callbacks=[monitor], val_set=val_data,
                                   device=device, seed=seed)
        findings += monitor.findings()
        findings += run_check(evaluation.check_generalization_gap, trainer.history)
    except Exception as exc:  # noqa: BLE001
        findings.append(check_failed("training.train_briefly", exc))
    finally:
        monitor.detach()

    eval_set = val_data if val_data is not None else data
    try:
        findings += _evaluate(model, io, eval_set, task, threshold, batch_size, num_classes,
                              Path(out_dir) if out_dir is not None else None)
    except Exception as exc:  # noqa: BLE001
        findings.append(check_failed("diagnose.evaluate", exc))

    findings = sort_findings(dedupe(findings))
    if out_dir is not None:
        if (Path(out_dir) / SCORE_PLOT).exists():
            for f in findings:
                if f.id in SCORE_PLOT_IDS:
                    f.evidence["plot"] = SCORE_PLOT
        write_diagnosis(findings, Path(out_dir), title)
    return findings


@torch.no_grad()
def _evaluate(model: nn.Module, io: ModelIO, dataset: Dataset | Sequence, task: str, threshold: float,
              batch_size: int, num_classes: int | None, out_dir: Path | None = None) -> list[Finding]:
    """Evaluate on the whole dataset given and run the evaluation checks on the result."""
    collate = collate_for(task)
    device = next(model.parameters()).device
    model.eval()
    findings: list[Finding] = []
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
            from visiondoctor.evaluation.segmentation import ConfusionMatrix

            main, _ = split_segmentation_outputs(io.predict(model, stack_images(images).to(device)))
            masks = stack_masks(targets)
            conf = conf or ConfusionMatrix(num_classes or int(main.shape[1]), io.ignore_index)
            conf.update(main.argmax(1).cpu(), masks)
    model.train()
    if task == "detection":
        from visiondoctor.doctor.coco_io import coco_from_batches
        from visiondoctor.evaluation.consistency import score_iou_consistency
        from visiondoctor.evaluation.errors import tide_errors

        gt, dets = coco_from_batches(all_targets, all_outputs, sizes)
        findings += run_check(consistency.score_iou_findings, score_iou_consistency(gt, dets, 0.05))
        findings += run_check(consistency.error_breakdown_findings, tide_errors(gt, dets))
        stats = outputs.measure_detector_outputs(model, first_batch[0], first_batch[1], threshold, io)
        for check in (outputs.check_background_collapse, outputs.check_detections_per_image, outputs.check_regression_range):
            findings += run_check(check, stats)
        if out_dir is not None and any(f.id in SCORE_PLOT_IDS for f in findings):
            write_score_plot(stats, out_dir)
    elif conf is not None:
        findings += run_check(evaluation.check_sample_size, conf.compute(total_images=len(dataset)))
    return findings


def write_score_plot(stats: outputs.OutputStats, out_dir: Path) -> None:
    """plots/doctor_fg_scores.png: the foreground-score histogram with the threshold drawn in."""
    if not stats.fg_histogram:
        return
    try:
        from visiondoctor.report.plots import score_histogram
    except ImportError:  # matplotlib missing: the numbers are in the evidence anyway
        return
    edges = [i / len(stats.fg_histogram) for i in range(len(stats.fg_histogram) + 1)]
    png = score_histogram(edges, stats.fg_histogram, stats.threshold,
                          f"Foreground score per {'location' if stats.source != 'detections' else 'detection'}")
    write_bytes_atomic(out_dir / SCORE_PLOT, png)


def write_diagnosis(findings: Sequence[Finding], out_dir: Path, title: str = "Diagnosis") -> tuple[Path, Path]:
    """diagnosis.json (list of Finding.to_dict()) and diagnosis.md (the report's markdown writer)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dicts = [f.to_dict() for f in findings]
    json_path = write_json_atomic(out_dir / "diagnosis.json", dicts)
    try:
        from visiondoctor.report.markdown import diagnosis_markdown

        text = diagnosis_markdown(dicts, title)
    except ImportError:  # the report package is optional for the doctor
        text = "\n".join([f"# {title}", ""] + [f"- **{f.severity}** `{f.id}`: {f.title}" for f in findings]) + "\n"
    md_path = write_bytes_atomic(out_dir / "diagnosis.md", text.encode("utf-8"))
    return json_path, md_path


def registry_factory(cfg: Any) -> Callable[..., nn.Module]:
    """The config's own model (model.name in the registry) as a factory taking num_classes."""
    from visiondoctor.models.registry import create_model

    def factory(num_classes: int) -> nn.Module:
        return create_model(cfg.model.name, num_classes=num_classes, image_size=cfg.model.image_size,
                            pretrained=cfg.model.pretrained, pretrained_backbone=cfg.model.pretrained_backbone,
                            **cfg.model.kwargs)

    return factory


def diagnose_cli(args: Any) -> list[Finding]:
    """What `visiondoctor diagnose --model-file x.py:factory [--loss-file y.py:fn]` calls.

    Reads from `args` (an argparse Namespace): model_file (None: the config's registered model), loss_file, config (YAML path or None),
    set (list of KEY=VALUE overrides or None), steps (int or None), output_dir / out (folder for the diagnosis;
    default runs/<name>-diagnosis). The data come from the config (data.path or data.synth) like `train`."""
    from visiondoctor.config import load_config

    cfg = load_config(getattr(args, "config", None), getattr(args, "set", None) or [])
    factory = load_factory(args.model_file) if getattr(args, "model_file", None) else registry_factory(cfg)
    loss_fn = load_loss(args.loss_file) if getattr(args, "loss_file", None) else None
    steps = int(getattr(args, "steps", None) or 100)
    out = getattr(args, "output_dir", None) or getattr(args, "out", None) or str(Path(cfg.output_dir) / f"{cfg.name}-diagnosis")
    common = dict(steps=steps, batch_size=min(cfg.train.batch_size, 8), loss_fn=loss_fn, out_dir=out,
                  title=f"Diagnosis of {args.model_file}", seed=cfg.train.seed,
                  device="cuda" if cfg.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if cfg.task == "segmentation":
        from visiondoctor.tasks.segmentation import SegmentationDataset, load_data, segmentation_transforms

        seg = load_data(cfg)
        size = cfg.model.image_size
        # images and masks resized together (augment="none"), so the short run and its evaluation batch them
        train = SegmentationDataset(seg.train, segmentation_transforms(True, size, "none"), train_labels=True)
        val = SegmentationDataset(seg.val, segmentation_transforms(True, size, "none"), train_labels=True)
        return diagnose(factory, train, task="segmentation", val_data=val, num_classes=seg.num_classes, **common)
    from visiondoctor.data.dataset import DetectionDataset
    from visiondoctor.data.transforms import detection_transforms
    from visiondoctor.doctor.checks.data import check_index
    from visiondoctor.tasks.detection import load_data

    det = load_data(cfg, background=True)
    train = DetectionDataset(det.train, det.category_map, detection_transforms(False))
    val = DetectionDataset(det.val, det.category_map, detection_transforms(False))
    data_findings = run_check(check_index, det.train, det.category_map, True)
    return diagnose(factory, train, task="detection", val_data=val, num_classes=det.category_map.num_classes,
                    background_label=True, extra_findings=data_findings, **common)
