"""The demo's result does not depend on the machine's speed: its preset is a step budget, so a busy
machine (here: fewer threads) trains the same steps as an idle one; a time budget stays an option."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from visiondoctor.config import Config, load_config
from visiondoctor.engine.trainer import TrainResult
from visiondoctor.evaluation.latency import torch_threads
from visiondoctor.tasks.pipeline import fit_model, prepare_data_files, seed_everything, task_for

# The demo preset's recipe (model, input size, batch 16, lr, warmup, augmentation, channels_last,
# monitors) on a tiny dataset and a 2-epoch budget: 32 training images // 16 = 2 steps per epoch.
TINY = ["data.synth_images=32", "data.synth_options={num_val: 8, num_test: 4, image_size: 160, min_size: 10, "
        "small_size: 16, max_size: 80}", "train.epochs=2"]


@pytest.mark.parametrize("preset", ["demo", "demo_quick"])
def test_demo_presets_have_no_time_budget(preset):
    cfg = load_config(preset)
    assert cfg.train.max_minutes == 0 and cfg.train.epochs > 0
    assert load_config(preset, ["train.max_minutes=9"]).train.max_minutes == 9  # still available as an option


def train_and_evaluate(cfg: Config) -> tuple[TrainResult, dict[str, Any]]:
    """pipeline.train's data -> model -> Trainer -> validation metrics, without the doctor's probes and
    the report (seconds each, and they do not decide the steps)."""
    task = task_for(cfg)
    seed_everything(cfg.train.seed)
    prepare_data_files(cfg)
    data = task.load_data(cfg)
    model = task.build_model(cfg, data.categories(), None)
    trainer, result = fit_model(model, task.datasets(cfg, data), cfg, None, loss_fn=task.loss_fn(cfg, data))
    return result, task.evaluate(trainer.eval_model, data, "val", cfg, torch.device("cpu"))


def test_demo_schedule_gives_the_same_steps_and_metrics_whatever_the_threads(tmp_path):
    results = {}
    for threads in (1, 2):
        cfg = load_config("demo", [*TINY, f"output_dir={tmp_path}", f"name=threads{threads}", "train.device=cpu"])
        with torch_threads(threads):
            assert torch.get_num_threads() == threads
            results[threads] = train_and_evaluate(cfg)
    (one, metrics_one), (two, metrics_two) = results[1], results[2]
    assert one.steps == two.steps == 2 * (32 // 16)
    assert one.epochs_completed == two.epochs_completed == 2 and one.stopped_by == two.stopped_by == "epochs"
    # Same steps on the same data in the same order: the same model up to float summation order, which
    # changes with the thread count (not between a busy and an idle machine with the same threads).
    for key in ("map", "map50"):
        assert metrics_one[key] == pytest.approx(metrics_two[key], abs=1e-3), key
