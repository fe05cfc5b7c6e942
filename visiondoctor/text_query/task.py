"""The text-query detector as a task of the run pipeline: the detection task's data, Trainer and
evaluation, plus what only this model has (class names as queries, the positives-versus-rest
analysis and the open-vocabulary figures, in `text_query.json`).

    from visiondoctor.tasks.pipeline import train, evaluate_run
    run = train(TextQueryTask(), default_config("tq"))

The model (`text_query_dense`, registered with task "text_query") keeps its own options in
`cfg.model.kwargs`: scoring (iou_aware | consistent | seed), quality_weight, encoder (auto | minilm |
hashed; `auto` is resolved and recorded before the config is saved), loss (LossConfig fields).
A run trained here is read back by the pipeline's `load_run_model` unchanged (eval mode returns
labels = query indices, with no background label).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visiondoctor.config import Config, load_config
from visiondoctor.data.detection import DetectionData, load_detection_data
from visiondoctor.data.formats import load_detection
from visiondoctor.models.registry import create_model
from visiondoctor.models.text_query.encoder import resolve_encoder_name
from visiondoctor.models.text_query.model import TextQueryDetector
from visiondoctor.presets import preset_path
from visiondoctor.rundir import RunDir
from visiondoctor.tasks.detection import DetectionTask, sample_image_ids
from visiondoctor.tasks.pipeline import register_task
from visiondoctor.text_query.analysis import open_vocabulary, positives_vs_rest
from visiondoctor.text_query.data import generate_open_vocabulary_shapes, query_groups
from visiondoctor.text_query.inference import EMBEDDING_CACHE, embedding_cache

log = logging.getLogger(__name__)
ANALYSIS_FILE = "text_query.json"
SCORE_FORMULAS = {"consistent": "sigmoid(similarity) ** (1 - a) * sigmoid(quality) ** a",
                  "seed": "sigmoid(similarity)  (the seed: CAM confidence, no box quality)",
                  "iou_aware": "sigmoid(similarity), the similarity trained to its box's IoU at positives, 0 elsewhere"}


def default_config(name: str = "text_query", output_dir: str = "runs", **model_kwargs: Any) -> Config:
    """The `text_query` preset (a working starting point) with a run name, folder and model options."""
    cfg = load_config(preset_path("text_query"))
    cfg.name, cfg.output_dir = name, output_dir
    cfg.model = replace(cfg.model, kwargs={**cfg.model.kwargs, **model_kwargs})
    return cfg


@register_task
class TextQueryTask(DetectionTask):
    """Detection data with the category names as the queries; `open_vocabulary_images`: size of the
    generated test set with unseen classes (synthetic shapes only; 0 = none)."""

    name = "text_query"

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("open_vocabulary_images",)

    def prepare_config(self, cfg: Config) -> Config:
        encoder = resolve_encoder_name(str(cfg.model.kwargs.get("encoder", "auto")))
        return replace(cfg, model=replace(cfg.model, kwargs={**cfg.model.kwargs, "encoder": encoder}))

    def load_data(self, cfg: Config, categories: dict[str, Any] | None = None) -> DetectionData:
        return load_detection_data(cfg, background=False)

    def build_model(self, cfg: Config, categories: dict[str, Any], run: RunDir | None) -> nn.Module:
        """The model with its class names embedded (cached in the run directory when given)."""
        cache = str(run.path / EMBEDDING_CACHE) if run is not None else None
        names = list(categories["names"])
        return create_model(cfg.model.name, num_classes=len(names), class_names=names, embedding_cache=cache,
                            pretrained=cfg.model.pretrained, pretrained_backbone=cfg.model.pretrained_backbone,
                            **cfg.model.kwargs)

    def after_evaluation(self, run: RunDir, model: nn.Module, data: DetectionData, cfg: Config, device: torch.device,
                         split: str) -> None:
        images = int(self.options.get("open_vocabulary_images", 100))
        analyse_run(run, model, replace(data, val=data.split(split)), cfg, device,
                    open_vocabulary_root(cfg, data.root, images))


def open_vocabulary_root(cfg: Config, data_root: Path, num_images: int) -> Path | None:
    """For synthetic shapes: a test set containing the unseen classes too, generated beside the
    training data with the same image settings. None for other data (no held-out names known)."""
    if cfg.data.synth != "shapes" or cfg.data.path or num_images <= 0:
        return None
    options = {k: v for k, v in cfg.data.synth_options.items() if k not in ("num_train", "num_val", "num_test", "classes")}
    return generate_open_vocabulary_shapes(Path(f"{data_root}_openvocab_n{num_images}"), num_images,
                                           seed=cfg.train.seed + 1, **options)


def analyse_run(run: RunDir, model: TextQueryDetector, data: DetectionData, cfg: Config, device: torch.device,
                open_vocabulary_data: Path | None = None) -> dict[str, Any]:
    """Positives versus the rest on the validation split, the shared score-IoU figures, and (when a
    dataset with held-out classes is given) the open-vocabulary figures; written to text_query.json."""
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
        index = load_detection(Path(open_vocabulary_data), "coco", "test")
        cache = embedding_cache(run, str(cfg.model.kwargs.get("encoder", "hashed")))
        analysis["open_vocabulary"] = open_vocabulary(model, index, query_groups(tuple(data.category_map.names)),
                                                      cache.embed, device, data.category_map.names)
    run.write_json(ANALYSIS_FILE, analysis)
    return analysis
