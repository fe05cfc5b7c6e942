"""The side-by-side benchmarks' own logic (no training, no Ultralytics): what each side is given,
how training speed is read, the table, and the reference loop's device options."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import train_vs_reference  # noqa: E402
import vs_ultralytics  # noqa: E402
from test_bootstrap import ground_truth, results  # noqa: E402
from visiondoctor.config import load_config  # noqa: E402
from visiondoctor.evaluation.bootstrap import compare_predictions  # noqa: E402


def args_for(*argv: str) -> argparse.Namespace:
    return vs_ultralytics.parse_args(list(argv))


def test_our_side_gets_the_defaults_from_scratch_and_the_budget_of_the_mode(tmp_path):
    dataset = vs_ultralytics.DATASETS["bccd"]
    timed = vs_ultralytics.our_config(Path("/data/bccd"), dataset, "time", 30, args_for("--minutes", "7"), tmp_path)
    assert (timed.train.max_minutes, timed.train.epochs) == (7.0, vs_ultralytics.UNBOUNDED_EPOCHS)
    assert timed.data.path == "/data/bccd" and not timed.data.synth and timed.model.image_size == 416
    assert not timed.model.pretrained and not timed.model.pretrained_backbone
    assert timed.model.name == load_config(None).model.name  # what `visiondoctor train --data X` trains
    assert timed.train.eval_every == vs_ultralytics.NO_VALIDATION  # no validation inside the budget ...
    epochs = vs_ultralytics.our_config(Path("/d"), dataset, "epochs", 12, args_for("--val"), tmp_path)
    assert (epochs.train.epochs, epochs.train.max_minutes) == (12, 0)
    assert epochs.train.eval_every == load_config(None).train.eval_every  # ... unless --val, on both sides
    demo = vs_ultralytics.our_config(Path("/d"), dataset, "time", 1, args_for("--ours-config", "demo",
                                                                               "--ours-set", "train.lr=0.01"), tmp_path)
    assert demo.model.name == "ssdlite_mobilenet_v3_small" and demo.train.lr == 0.01 and demo.data.path == "/d"


def test_arguments_are_checked_and_a_missing_ultralytics_says_how_to_install_it(tmp_path):
    with pytest.raises(SystemExit):
        args_for("--datasets", "coco")
    with pytest.raises(SystemExit, match=r"pip install ultralytics==") as raised:
        vs_ultralytics.check_ultralytics(str(tmp_path / "no-python"))
    assert "AGPL" in str(raised.value)


def test_theirs_from_an_earlier_run_is_read_back_with_its_predictions(tmp_path):
    """--theirs-from: Ultralytics' side as an earlier run left it (result.json + predictions), not trained again."""
    predictions = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}]
    (tmp_path / "predictions_val.json").write_text(json.dumps(predictions))
    result = {"model": "yolo26n.yaml", "predictions": {"val": {"file": str(tmp_path / "predictions_val.json")}},
              "training": {"epochs_completed": 4, "train_seconds": 300.0, "images_seen": 5400, "images_per_s": 18.0,
                           "train_call_seconds": 320.0},
              "params": 2.5e6, "params_inference": 2.4e6, "latency": {"latency_ms": {"onnxruntime": 16.0}},
              "network_attempts": [], "versions": {}}
    (tmp_path / "result.json").write_text(json.dumps(result))
    theirs = vs_ultralytics.read_theirs(tmp_path)
    assert theirs["predictions"] == {"val": predictions} and theirs["epochs"] == 4 and theirs["images_per_s"] == 18.0
    assert args_for("--theirs-from", str(tmp_path)).theirs_from == str(tmp_path)


def test_training_rate_is_images_over_the_seconds_of_the_training_loops():
    history = [{"split": "train", "step": 10.0, "images_per_s": 20.0},   # 160 images in 8 s
               {"split": "val", "step": 10.0, "map": 0.1},
               {"split": "train", "step": 15.0, "images_per_s": 10.0}]  # 80 images in 8 s (a partial epoch)
    rate, images, seconds = vs_ultralytics.training_rate(history, batch_size=16)
    assert (images, seconds) == (240, pytest.approx(16.0)) and rate == pytest.approx(15.0)


def test_side_by_side_table_has_both_sides_ratios_and_the_paired_test():
    gt = ground_truth(50, seed=1)
    scored = {"val": compare_predictions(gt, {"ultralytics": results(gt, 0.3, 2), "visiondoctor": results(gt, 0.9, 3)},
                                         keys=vs_ultralytics.SCORED, resamples=100)}
    side = {"model": "m", "images_per_s": 10.0, "train_seconds": 60.0, "epochs": 2, "steps": 30,
            "latency_ms": {"pytorch": 20.0, "onnxruntime": 10.0}, "params": 2e6, "params_inference": 2e6}
    text = vs_ultralytics.table("shapes", {**side, "images_per_s": 40.0}, side, scored)
    assert "| train images/s | 10.0 | 40.0 | 4.00 |  |" in text
    assert "| inference ms/image, ONNX Runtime | 10.0 | 10.0 | 1.00 |  |" in text
    line = next(row for row in text.splitlines() if row.startswith("| val mAP@.5 |"))
    assert line.endswith(" significant |") and "not significant" not in line and " +0." in line
    assert "val 50" in text and "100 resamples" in text


def test_reference_loop_uses_channels_last_exactly_when_the_engine_does():
    cfg = load_config("demo", ["data.synth_images=16"])
    assert cfg.train.channels_last == "on"
    categories = {"dataset_ids": [1, 2], "names": ["a", "b"], "background": True}
    data = argparse.Namespace(categories=lambda: categories)
    model = train_vs_reference.reference_model(cfg, data, torch.device("cpu"))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    off = load_config("demo", ["train.channels_last='off'"])  # quoted: YAML reads a bare off as false
    conv = next(m for m in train_vs_reference.reference_model(off, data, torch.device("cpu")).modules()
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous()
