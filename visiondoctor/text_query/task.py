"""Train and analyse a text-query detector run: the detection task's data, Trainer and evaluation,
plus what only this model has (class names as queries, the positives-versus-rest analysis and
the open-vocabulary figures, in `text_query.json`).

    train_text_query(cfg, resume=False) -> RunDir     (cfg.model.name == "text_query_dense"; alias `train`)
    evaluate_run(run_dir, split="val", max_images=0)  the detection task's re-evaluation + this analysis
    analyse_run(run, model, data, cfg, device) -> dict  (writes text_query.json)

`train` and `evaluate_run` have the signatures of visiondoctor.tasks.detection's, so the CLI
can route a run whose model is `text_query_dense` to this module as it routes tasks.

The model's own options go in `cfg.model.kwargs`: scoring (consistent | seed), quality_weight,
encoder (auto | minilm | hashed; `auto` is resolved and recorded before the config is saved),
loss (LossConfig fields). A run trained here is read back by the detection task's
`load_run_model` / `evaluate_run` / `predict_path` unchanged (eval mode returns labels =
query indices, with no background label).
"""
from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from visiondoctor.config import Config, load_config, save_config
from visiondoctor.data.dataset import DetectionDataset, collate_detection
from visiondoctor.data.transforms import detection_transforms
from visiondoctor.engine.trainer import Trainer, resolve_device
from visiondoctor.models.registry import create_model
from visiondoctor.rundir import RunDir
from visiondoctor.text_query.encoder import resolve_encoder_name
from visiondoctor.text_query.inference import EMBEDDING_CACHE, embedding_cache
from visiondoctor.text_query.model import MODEL_NAME, TextQueryDetector

log = logging.getLogger(__name__)
ANALYSIS_FILE = "text_query.json"
SCORE_FORMULAS = {"consistent": "sigmoid(similarity) ** (1 - a) * sigmoid(quality) ** a",
                  "seed": "sigmoid(similarity)  (the seed: CAM confidence, no box quality)",
                  "iou_aware": "sigmoid(similarity), the similarity trained to its box's IoU at positives, 0 elsewhere"}


def default_config(name: str = "text_query", output_dir: str = "runs", **model_kwargs: Any) -> Config:
    """The `text_query` preset (a working starting point) with a run name, folder and model options."""
    from visiondoctor.presets import preset_path

    cfg = load_config(preset_path("text_query"))
    cfg.name, cfg.output_dir = name, output_dir
    cfg.model = replace(cfg.model, kwargs={**cfg.model.kwargs, **model_kwargs})
    return cfg


def build_text_query_model(cfg: Config, class_names: tuple[str, ...], run: RunDir | None) -> TextQueryDetector:
    """The model with its class names embedded (cached in the run directory when given)."""
    kwargs = dict(cfg.model.kwargs)
    cache = str(run.path / EMBEDDING_CACHE) if run is not None else None
    return create_model(cfg.model.name, num_classes=len(class_names), class_names=list(class_names),
                        embedding_cache=cache, pretrained=cfg.model.pretrained,
                        pretrained_backbone=cfg.model.pretrained_backbone, **kwargs)


def train_text_query(cfg: Config, resume: bool = False, open_vocabulary_images: int = 100,
                     report: bool = True) -> RunDir:
    """Train on cfg's data with the category names as queries; evaluate (metrics, predictions,
    consistency as every detection run) and analyse (text_query.json); write the report."""
    from visiondoctor.tasks.detection import best_weights, build_report, data_summary, evaluate_model, load_data
    from visiondoctor.tasks.diagnosis import RunDiagnosis, data_findings

    if cfg.model.name != MODEL_NAME:
        raise ValueError(f"train_text_query trains {MODEL_NAME!r}, not {cfg.model.name!r}")
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    encoder = resolve_encoder_name(str(cfg.model.kwargs.get("encoder", "auto")))
    cfg = replace(cfg, model=replace(cfg.model, kwargs={**cfg.model.kwargs, "encoder": encoder}))
    run = RunDir.create(cfg.run_path)
    data = load_data(cfg, background=False)
    save_config(cfg, run.config)
    run.write_json("categories.json", data.category_map.to_dict())
    run.write_json("data_summary.json", data_summary(data))
    model = build_text_query_model(cfg, data.category_map.names, run)
    device = resolve_device(cfg.train.device)

    train_set = DetectionDataset(data.train, data.category_map, detection_transforms(True, cfg.train.augment))
    val_set = DetectionDataset(data.val, data.category_map, detection_transforms(False))
    # The doctor as in every detection run: data and probe checks before, monitor during, evaluation checks after.
    doctor = RunDiagnosis(model, cfg, data.category_map.num_classes, False)
    doctor.before_training(model, val_set if len(val_set) else train_set, collate_detection,
                           data_findings(data.train, data.category_map, False))
    trainer = Trainer(model, train_set, cfg.train, collate_fn=collate_detection,
                      evaluate_fn=lambda m: evaluate_model(m, data.val, data.category_map, cfg, device),
                      val_set=val_set, primary_metric="map", callbacks=[doctor.monitor] if doctor.monitor else [],
                      run_dir=run.path, workers=cfg.data.workers)
    if resume and not trainer.resume():
        log.warning("--resume: no usable checkpoint in %s; starting from scratch", run.checkpoints)
    result = trainer.fit()
    final = best_weights(run, trainer.eval_model, device)
    evaluate_model(final, data.val, data.category_map, cfg, device, run)
    doctor.after_evaluation(run, "map")
    ov_root = open_vocabulary_root(cfg, data.root, open_vocabulary_images)
    analyse_run(run, final, data, cfg, device, ov_root)
    run.write_json("train_result.json", {"steps": result.steps, "epochs": result.epochs_completed,
                                         "elapsed_s": round(result.elapsed_s, 1), "stopped_by": result.stopped_by})
    if report:
        build_report(run)
    return run


def open_vocabulary_root(cfg: Config, data_root: Path, num_images: int) -> Path | None:
    """For synthetic shapes: a test set containing the unseen classes too, generated beside the
    training data with the same image settings. None for other data (no held-out names known)."""
    if cfg.data.synth != "shapes" or cfg.data.path or num_images <= 0:
        return None
    from visiondoctor.text_query.data import generate_open_vocabulary_shapes

    options = {k: v for k, v in cfg.data.synth_options.items() if k not in ("num_train", "num_val", "num_test", "classes")}
    return generate_open_vocabulary_shapes(Path(f"{data_root}_openvocab_n{num_images}"), num_images,
                                           seed=cfg.train.seed + 1, **options)


def analyse_run(run: RunDir, model: TextQueryDetector, data: Any, cfg: Config, device: torch.device,
                open_vocabulary_data: Path | None = None) -> dict[str, Any]:
    """Positives versus the rest on the validation split, the shared score-IoU figures, and (when a
    dataset with held-out classes is given) the open-vocabulary figures; written to text_query.json."""
    from visiondoctor.tasks.detection import sample_image_ids
    from visiondoctor.text_query.analysis import open_vocabulary, positives_vs_rest
    from visiondoctor.text_query.data import query_groups

    ids = sample_image_ids(data.val, cfg.eval.max_images, cfg.train.seed)
    analysis: dict[str, Any] = {
        "model": cfg.model.name, "scoring": model.scoring, "quality_weight": model.quality_weight,
        "score_formula": SCORE_FORMULAS[model.scoring], "encoder": cfg.model.kwargs.get("encoder"),
        "train_queries": list(data.category_map.names), "split": cfg.eval.split,
        "positives_vs_rest": positives_vs_rest(model, data.val, data.category_map, device, image_ids=ids),
    }
    consistency_path = run.path / "consistency.json"
    if consistency_path.exists():
        c = run.read_json("consistency.json")
        analysis["consistency"] = {k: c.get(k) for k in ("n", "spearman", "mean_iou", "high_score_low_iou_share")}
    if open_vocabulary_data is not None:
        from visiondoctor.data.formats import load_detection

        index = load_detection(Path(open_vocabulary_data), "coco", "test")
        cache = embedding_cache(run, str(cfg.model.kwargs.get("encoder", "hashed")))
        analysis["open_vocabulary"] = open_vocabulary(model, index, query_groups(tuple(data.category_map.names)), cache.embed, device,
                                                      data.category_map.names)
    run.write_json(ANALYSIS_FILE, analysis)
    return analysis


train = train_text_query


def evaluate_run(run_dir: str | Path, split: str = "val", max_images: int = 0,
                 open_vocabulary_images: int = 100) -> dict[str, Any]:
    """Re-evaluate a finished text-query run on a split (the detection task's evaluation and
    diagnosis), redo the analysis on that split, and rebuild the report."""
    from visiondoctor.tasks import detection

    metrics = detection.evaluate_run(run_dir, split=split, max_images=max_images)
    run = RunDir.open(run_dir)
    device = resolve_device("auto")
    model, cfg, category_map = detection.load_run_model(run, device)
    cfg = replace(cfg, eval=replace(cfg.eval, max_images=max_images, split=split))
    data = detection.load_data(cfg, background=category_map.background)
    index = {"train": data.train, "val": data.val, "test": data.test}[split]
    analyse_run(run, model, replace(data, val=index), cfg, device,
                open_vocabulary_root(cfg, data.root, open_vocabulary_images))
    detection.build_report(run)
    return metrics
