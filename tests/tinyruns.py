"""Tiny finished runs for tests that need a run directory (export, video, latency): real training
through the run pipeline (`visiondoctor.tasks.pipeline.train`) on a small shapes set, a few steps."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from visiondoctor.config import load_config
from visiondoctor.tasks.pipeline import task_for, train

SHAPES_96 = ["data.synth=shapes", "data.synth_images=16",
             "data.synth_options={num_val: 4, num_test: 2, image_size: 96, min_size: 16, max_size: 48}"]
# Faster R-CNN at test size: fewer proposals and sampled RoIs keep a step well under a second.
SMALL_RCNN = ("model.kwargs={box_batch_size_per_image: 32, rpn_pre_nms_top_n_train: 200, rpn_post_nms_top_n_train: 100, "
              "rpn_pre_nms_top_n_test: 100, rpn_post_nms_top_n_test: 50}")


def train_tiny_run(out: Path, model: str, epochs: int = 2, extra: Sequence[str] = ()) -> Path:
    cfg = load_config(None, [*SHAPES_96, f"model.name={model}", "model.image_size=96", f"train.epochs={epochs}",
                             "train.batch_size=8", "train.warmup_steps=2", "train.lr=0.02", "train.monitors=false",
                             "model.pretrained=false", "model.pretrained_backbone=false",
                             f"output_dir={out}", f"name={model}", *extra])
    return train(task_for(cfg), cfg).path
