"""Class-incremental training: phases that add classes, one run directory for all of them.

    run_phases(cfg, phases, method="replay+distill" | "replay" | "distill" | "finetune", options) -> results

Phase 0 trains the detector on its classes (anchors fitted to its boxes). Each later phase
grows the classifier (old rows kept), trains on the phase's images — which annotate only the
new classes — for the same step budget whatever the method, and then evaluates the model on
the evaluation split: AP on the old classes, the new ones and all seen ones, and forgetting.

- "finetune": the new images only (the naive baseline: old classes are learned as background);
- "replay": plus an exemplar memory of `memory_per_class` images per old class;
- "distill": plus KL distillation of the old-class RoI logits from the previous phase's model;
- "replay+distill": both.

Run directory: phases.json (the per-phase results, rewritten after every phase), phase_<k>/
(that phase's history.csv and final checkpoint), history.csv (all phases, steps continued),
and, for the final model on all classes, what a `train` run writes (metrics.json,
predictions.json, gt.json, diagnosis.json, report.html with the per-phase section).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from visiondoctor.config import Config, save_config
from visiondoctor.data.dataset import DetectionDataset, collate_detection
from visiondoctor.data.detection import load_detection_data
from visiondoctor.data.formats.coco import to_coco_dict
from visiondoctor.data.samples import CategoryMap, DetectionIndex
from visiondoctor.data.transforms import detection_transforms
from visiondoctor.engine.checkpoint import load_latest
from visiondoctor.engine.trainer import default_loss_fn, resolve_device
from visiondoctor.incremental.distill import RoIDistillation
from visiondoctor.incremental.metrics import forgetting, phase_metrics
from visiondoctor.incremental.phases import (
    Phase,
    load_phases,
    merge,
    phase_training_index,
    restrict,
    seen_category_map,
    select_exemplars,
)
from visiondoctor.incremental.unfreeze import GradualUnfreezing
from visiondoctor.models.anchor_fit import AnchorFit, boxes_in_input_frame, fit_anchors
from visiondoctor.models.detection import resolve_weights
from visiondoctor.models.registry import create_model
from visiondoctor.models.two_stage import grow_predictor, measure_features
from visiondoctor.rundir import RunDir, write_bytes_atomic
from visiondoctor.tasks.detection import evaluate_model, predict
from visiondoctor.tasks.diagnosis import RunDiagnosis
from visiondoctor.tasks.pipeline import Datasets, build_report, claim_run_name, fit_model

log = logging.getLogger(__name__)

METHODS = {"finetune": (False, False), "replay": (True, False), "distill": (False, True), "replay+distill": (True, True)}
RESULTS_FILE = "phases.json"


@dataclass
class IncrementalOptions:
    """How later phases are trained (phase 0 follows `cfg.train` as any run does)."""

    memory_per_class: int = 3  # exemplar images kept per old class (replay)
    temperature: float = 2.0  # distillation temperature
    distill_weight: float = 1.0  # weight of loss_distill unless train.loss_weights sets it
    phase_steps: int = 200  # optimizer steps per later phase, the same for every method (rounded up to whole epochs)
    phase_lr: float = 0.0  # learning rate of later phases; 0 = train.lr
    # backbone stage -> epoch of a later phase at which it is released (None: frozen for the whole phase)
    unfreeze: dict[str, int | None] = field(default_factory=lambda: {"stem": None, "layer1": None, "layer2": 2})
    fit_anchors: bool = True  # fit the anchors to phase 0's boxes unless model.kwargs gives anchor_sizes
    reuse_base: str = ""  # a run directory of the same config whose phase 0 (model and results) to reuse
    report: bool = True  # write report.html at the end (`visiondoctor report RUN` can write it later)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----- building blocks -------------------------------------------------------------------------------------------

def fit_model_anchors(cfg: Config, train: DetectionIndex) -> AnchorFit:
    """Anchors fitted to `train`'s boxes on the feature maps measured from the configured model."""
    probe = create_model(cfg.model.name, num_classes=2, image_size=cfg.model.image_size,
                         **{k: v for k, v in cfg.model.kwargs.items() if k not in ("anchor_sizes", "aspect_ratios")})
    _, feature_hw, strides = measure_features(probe.backbone, cfg.model.image_size)
    default = ([(2 * s, 4 * s) for s in strides], [(0.5, 1.0, 2.0)] * len(strides))
    size = cfg.model.image_size
    return fit_anchors(boxes_in_input_frame(train.records, size), (size, size), feature_hw, baseline=default)


def build_phase_model(cfg: Config, num_classes: int, anchors: AnchorFit | None) -> nn.Module:
    kwargs = dict(cfg.model.kwargs)
    if anchors is not None:
        kwargs.update(anchor_sizes=anchors.sizes, aspect_ratios=anchors.aspect_ratios)
    model, _ = resolve_weights(  # the best weights that can be had, as a single run's model
        lambda p, b: create_model(cfg.model.name, num_classes=num_classes, image_size=cfg.model.image_size,
                                  pretrained=p, pretrained_backbone=b, **kwargs),
        cfg.model.name, cfg.model.pretrained, cfg.model.pretrained_backbone)
    if not hasattr(model, "roi_heads"):
        raise ValueError(f"model {cfg.model.name!r} is not a two-stage detector (no roi_heads): incremental phases "
                         "grow its RoI classifier; use model.name=two_stage_rcnn")
    return model


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """As the Trainer's loader: the last partial batch is dropped once there are two full ones."""
    return num_images // batch_size if num_images >= 2 * batch_size else max(1, math.ceil(num_images / batch_size))


def _phase_train_config(cfg: Config, phase: int, num_images: int, options: IncrementalOptions, distill: bool):
    train = cfg.train
    if phase > 0:
        epochs = max(1, math.ceil(options.phase_steps / steps_per_epoch(num_images, train.batch_size)))
        train = dataclasses.replace(train, epochs=epochs, lr=options.phase_lr or train.lr, max_minutes=0.0)
    weights = dict(train.loss_weights)
    if distill:
        weights.setdefault("loss_distill", options.distill_weight)
    # eval happens after the phase (run_phases), checkpoints once at its end
    return dataclasses.replace(train, loss_weights=weights, checkpoint_every=max(1, train.epochs),
                               eval_every=max(1, train.epochs), early_stop_patience=0, seed=train.seed + phase)


def _load_base(source: Path, model: nn.Module, device: torch.device) -> dict[str, Any]:
    """Phase 0's final weights and results from another run (same config), to share phase 0 between methods."""
    found = load_latest(source / "phase_0" / "checkpoints", map_location=device)
    results = RunDir(source).read_json(RESULTS_FILE) if (source / RESULTS_FILE).exists() else None
    if found is None or not results or not results.get("phases"):
        raise FileNotFoundError(f"{source}: no finished phase 0 to reuse (phase_0/checkpoints and {RESULTS_FILE})")
    model.load_state_dict(found[1]["model"])
    return results["phases"][0]


def _append_history(run: RunDir, phase: int, offset: int) -> int:
    """Add phase_<k>/history.csv to the run's history.csv, steps continued; returns the new step offset."""
    source = run.path / f"phase_{phase}" / "history.csv"
    if not source.exists():
        return offset
    with open(source, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    previous: list[dict[str, Any]] = []
    if phase > 0 and run.history.exists():
        with open(run.history, newline="", encoding="utf-8") as fh:
            previous = list(csv.DictReader(fh))
    last = offset
    for row in rows:
        row["phase"] = phase
        if row.get("step") not in (None, ""):
            row["step"] = int(float(row["step"])) + offset
            last = max(last, row["step"])
    all_rows = previous + rows
    columns: list[str] = []
    for row in all_rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(all_rows)
    write_bytes_atomic(run.history, out.getvalue().encode())
    return last


# ----- the phases ------------------------------------------------------------------------------------------------

def run_phases(cfg: Config, phases: str | Path | Sequence[Phase] | None = None, method: str = "replay+distill",
               options: IncrementalOptions | None = None, exist_ok: bool = False) -> dict[str, Any]:
    """Train `cfg`'s model phase by phase and evaluate after each; returns (and writes) the results, with
    "run_dir": the run's folder (a new `<name>-2`, ... when `<name>` exists, unless `exist_ok`)."""
    if method not in METHODS:
        raise ValueError(f"unknown incremental method {method!r}; available: {', '.join(METHODS)}")
    replay, distill = METHODS[method]
    options = options or IncrementalOptions()
    data = load_detection_data(cfg, background=True)
    if phases is None or isinstance(phases, (str, Path)):
        phases = load_phases(Path(phases) if phases else data.root / "phases.json", [c.id for c in data.train.categories])
    phases = list(phases)
    eval_index = {"val": data.val, "test": data.test, "train": data.train}.get(cfg.eval.split)
    if eval_index is None:
        raise FileNotFoundError(f"{data.root}: no {cfg.eval.split!r} split to evaluate the phases on")
    gt = to_coco_dict(eval_index)
    names = {c.id: c.name for c in data.train.categories}
    device = resolve_device(cfg.train.device)
    cfg = claim_run_name(cfg, reuse=exist_ok)
    run = RunDir.create(cfg.run_path)
    save_config(cfg, run.config)
    run.write_json("data_summary.json", data.summary())

    results: dict[str, Any] = {"run_dir": str(run.path), "method": method, "options": options.to_dict(), "eval_split": cfg.eval.split,
                               "num_phases": len(phases), "phases": []}
    taught_in = {names[c]: p.index for p in phases for c in p.category_ids}
    per_class_ap50: list[dict[str, float | None]] = []
    memory: list[int] = []
    model: nn.Module | None = None
    diagnosis = None
    step_offset = 0
    for phase in phases:
        t = phase.index
        torch.manual_seed(cfg.train.seed + t)
        random.seed(cfg.train.seed + t)
        cmap = seen_category_map(data.train, phases, t)
        old_ids = [c for p in phases[:t] for c in p.category_ids]
        new_ids = list(phase.category_ids)
        train_index, outside = phase_training_index(data.train, phase)
        own_images = len(train_index.records)
        teacher, anchors = None, None
        if t == 0:
            anchors = (fit_model_anchors(cfg, train_index) if options.fit_anchors and "anchor_sizes" not in cfg.model.kwargs
                       else None)
            model = build_phase_model(cfg, cmap.num_classes, anchors)
        else:
            if distill:
                teacher = copy.deepcopy(model).to(device).eval()
            grow_predictor(model, cmap.num_classes)
            if replay and memory:
                train_index = merge([train_index, restrict(data.train, old_ids, memory)[0]])

        entry: dict[str, Any]
        if t == 0:
            diagnosis = _diagnose_before(model, cfg, cmap, train_index)
        if t == 0 and options.reuse_base:
            base_entry = _load_base(Path(options.reuse_base), model.to(device), device)
            entry = {**base_entry, "reused_from": options.reuse_base}
            phase_result = None
        else:
            phase_cfg = _phase_train_config(cfg, t, len(train_index.records), options, teacher is not None)
            callbacks: list[Any] = []
            if t > 0 and options.unfreeze:
                callbacks.append(GradualUnfreezing(model, options.unfreeze))
            if t == 0 and diagnosis is not None:
                callbacks += diagnosis.callbacks
            sets = Datasets(train=DetectionDataset(train_index, cmap, detection_transforms(True, cfg.train.augment)),
                            val=None, probe=DetectionDataset(train_index, cmap, detection_transforms(False)),
                            collate=collate_detection)
            loss_fn = RoIDistillation(teacher, old_outputs=1 + len(old_ids), temperature=options.temperature) \
                if teacher is not None else default_loss_fn
            trainer, phase_result = fit_model(model, sets, cfg, run.path / f"phase_{t}", loss_fn=loss_fn,
                                              callbacks=callbacks, train_config=phase_cfg)
            model = trainer.eval_model
            step_offset = _append_history(run, t, step_offset)
            entry = {}

        # every evaluation image, its not-yet-taught classes unlabelled (the model has no label for them)
        seen_eval, _ = restrict(eval_index, [*old_ids, *new_ids], keep_empty=True)
        predictions = predict(model, seen_eval, cmap, device, cfg.train.batch_size, cfg.eval.score_threshold)
        metrics = phase_metrics(gt, predictions, old_ids, new_ids)
        per_class_ap50.append({k: v["ap50"] for k, v in metrics["all"]["per_class"].items()})
        forgot = forgetting(per_class_ap50, taught_in, t)
        entry.update({
            "phase": t,
            "new_classes": [names[c] for c in new_ids],
            "old_classes": [names[c] for c in old_ids],
            "map50": {k: (m["map50"] if m else None) for k, m in metrics.items()},
            "map": {k: (m["map"] if m else None) for k, m in metrics.items()},
            "per_class_ap50": per_class_ap50[-1],
            "forgetting_ap50": forgot["mean"],
            "forgetting_per_class": forgot["per_class"],
        })
        if phase_result is not None:
            entry["train"] = {"images": len(train_index.records), "phase_images": own_images,
                              "memory_images": len(train_index.records) - own_images,
                              "annotations_outside_phase": outside, "steps": phase_result.steps,
                              "epochs": phase_result.epochs_completed, "elapsed_s": round(phase_result.elapsed_s, 1),
                              "distill": teacher is not None}
        if anchors is not None:
            entry["anchors"] = anchors.to_dict()
        results["phases"].append(entry)
        if replay:
            memory += select_exemplars(phase_training_index(data.train, phase)[0], new_ids, options.memory_per_class,
                                       cfg.train.seed)
        results["memory_image_ids"] = sorted(memory)
        results["final"] = _summary(results["phases"])
        run.write_json(RESULTS_FILE, results)
        log.info("phase %d (%s): mAP50 old %s new %s all %s, forgetting %s", t, method, *(
            _fmt(entry["map50"][k]) for k in ("old", "new", "all")), _fmt(entry["forgetting_ap50"]))

    run.write_json("categories.json", cmap.to_dict())
    evaluate_model(model, eval_index, cmap, cfg, device, run)
    if diagnosis is not None:
        try:
            diagnosis.after_evaluation(run, "map")
        except Exception as exc:  # noqa: BLE001 — the diagnosis must never lose the phases' results
            log.warning("diagnosis after the phases failed: %s", exc)
    if options.report:
        build_report(run)
    return results


def _diagnose_before(model: nn.Module, cfg: Config, cmap: CategoryMap, train_index: DetectionIndex) -> Any:
    """The doctor's static checks on phase 0's model and data."""
    diagnosis = RunDiagnosis(model, cfg, cmap.num_classes, True)
    probe = DetectionDataset(train_index, cmap, detection_transforms(False))
    diagnosis.before_training(model, probe, collate_detection)
    return diagnosis


def _summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    last = entries[-1]
    first = entries[0]
    base_now = None
    base_classes = first["new_classes"]
    aps = [last["per_class_ap50"].get(c) for c in base_classes]
    aps = [a for a in aps if a is not None]
    if aps:
        base_now = sum(aps) / len(aps)
    return {"phases_done": len(entries), "map50_all": last["map50"]["all"], "map50_old": last["map50"]["old"],
            "map50_new": last["map50"]["new"], "forgetting_ap50": last["forgetting_ap50"],
            "base_classes_ap50_after_phase_0": first["map50"]["new"], "base_classes_ap50_now": base_now}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
