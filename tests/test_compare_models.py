"""Architectures for comparison: SSD-MobileNetV2-FPNLite and the EfficientDet wrapper train through
torchvision's contract (losses in train mode, detections in eval mode); speed measurement."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_bootstrap import ground_truth, results
from tiny import SquaresDataset
from visiondoctor.cli import main
from visiondoctor.evaluation.coco import evaluate_detections
from visiondoctor.evaluation.speed import count_params, measure_model
from visiondoctor.models.registry import available_models, create_model
from visiondoctor.report.compare import compare_runs

HAS_EFFDET = importlib.util.find_spec("effdet") is not None


def fit_steps(model: torch.nn.Module, size: int, steps: int, lr: float) -> list[float]:
    """Train on one fixed batch of squares; the total loss of each step."""
    torch.manual_seed(0)
    data = SquaresDataset(4, size)
    images, targets = [d[0] for d in data], [d[1] for d in data]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        loss_dict = model(images, targets)
        assert set(loss_dict) == {"classification", "bbox_regression"}
        total = sum(loss_dict.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(float(total.detach()))
    return losses


def assert_valid_detections(model: torch.nn.Module, num_classes: int, height: int, width: int) -> None:
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, height, width), torch.rand(3, height, width)])
    assert len(out) == 2
    for det in out:
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        assert len(boxes) > 0 and boxes.shape == (len(scores), 4) and labels.shape == scores.shape
        assert torch.isfinite(boxes).all() and (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
        assert boxes.min() >= 0 and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert ((scores >= 0) & (scores <= 1)).all() and ((labels >= 1) & (labels < num_classes)).all()


def test_new_architectures_are_registered():
    assert {"ssd_mobilenet_v2_fpnlite", "efficientdet_d1", "retinanet_resnet50_fpn"} <= set(available_models("detection"))


def test_ssd_mobilenet_v2_fpnlite_learns_and_detects():
    torch.manual_seed(0)
    model = create_model("ssd_mobilenet_v2_fpnlite", num_classes=3, image_size=64, anchor_scale=2.0)
    losses = fit_steps(model, 64, steps=8, lr=0.02)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert_valid_detections(model, 3, 50, 70)  # any input size: resized to 64 and mapped back


def test_fpnlite_has_five_levels_of_separable_smoothing():
    model = create_model("ssd_mobilenet_v2_fpnlite", num_classes=3, image_size=128)
    features = model.backbone(torch.rand(1, 3, 128, 128))
    assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 2, 1]  # strides 8 ... 128
    assert all(block[0][0].groups == 128 for block in model.backbone.fpn.layer_blocks)


def test_pretrained_detector_weights_are_refused_clearly():
    with pytest.raises(RuntimeError, match="no COCO-pretrained"):
        create_model("ssd_mobilenet_v2_fpnlite", num_classes=3, pretrained=True)


@pytest.mark.skipif(not HAS_EFFDET, reason="effdet extra not installed")
def test_efficientdet_d1_learns_and_detects():
    torch.manual_seed(0)
    model = create_model("efficientdet_d1", num_classes=3, image_size=128)
    losses = fit_steps(model, 128, steps=6, lr=0.01)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    assert_valid_detections(model, 3, 100, 140)


@pytest.mark.skipif(not HAS_EFFDET, reason="effdet extra not installed")
def test_efficientdet_size_must_divide_by_its_coarsest_stride():
    with pytest.raises(ValueError, match="multiple of 128"):
        create_model("efficientdet_d1", num_classes=3, image_size=160)


def test_efficientdet_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "effdet", None)  # import effdet now raises ImportError
    with pytest.raises(ImportError, match=r"pip install visiondoctor\[effdet\]"):
        create_model("efficientdet_d1", num_classes=3, image_size=128)


def test_measure_model_counts_params_and_flops():
    model = create_model("ssd_mobilenet_v2_fpnlite", num_classes=3, image_size=64)
    result = measure_model(model, 64, runs=2, warmup=1)
    assert result["params"] == count_params(model) > 0
    assert result["latency_ms_median"] > 0 and result["latency_ms_mean"] > 0
    big = measure_model(create_model("ssd_mobilenet_v2_fpnlite", num_classes=3, image_size=128), 128, runs=1, warmup=0)
    assert 3 < big["flops"] / result["flops"] < 5  # convolutions scale with the pixel count


def test_ssdlite_mobilenet_v3_small_learns_and_detects():
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilenet_v3_small", num_classes=3, image_size=64)
    losses = fit_steps(model, 64, steps=8, lr=0.02)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert_valid_detections(model, 3, 50, 70)
    large = create_model("ssdlite320_mobilenet_v3_large", num_classes=3, image_size=64)
    assert count_params(model) < 0.5 * count_params(large)
    with pytest.raises(RuntimeError, match="no COCO-pretrained"):
        create_model("ssdlite_mobilenet_v3_small", num_classes=3, pretrained=True)


def _default_boxes(model: torch.nn.Module, size: int) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Feature-map sizes the backbone really produces at `size` px, and the default boxes on them."""
    from torchvision.models.detection.image_list import ImageList

    model.eval()
    with torch.no_grad():
        features = list(model.backbone(torch.zeros(1, 3, size, size)).values())
        boxes = model.anchor_generator(ImageList(torch.zeros(1, 3, size, size), [(size, size)]), features)[0]
    return [tuple(f.shape[-2:]) for f in features], boxes


@pytest.mark.parametrize("name", ["ssdlite_mobilenet_v3_small", "ssdlite320_mobilenet_v3_large"])
def test_stride8_level_adds_a_finer_level_that_reaches_small_objects(name):
    from torchvision.ops import box_iou

    plain = create_model(name, num_classes=3, image_size=320, anchor_min_ratio=0.15)
    finer = create_model(name, num_classes=3, image_size=320, anchor_min_ratio=0.15, finest_stride=8)
    plain_maps, plain_boxes = _default_boxes(plain, 320)
    finer_maps, finer_boxes = _default_boxes(finer, 320)
    assert finer_maps == [(40, 40), *plain_maps]  # one level in front, at stride 8; the others unchanged
    assert finer.anchor_generator.scales == [plain.anchor_generator.scales[0] / 2, *plain.anchor_generator.scales]
    # 20-px objects (under 16 px on a 160-px image seen at 320): the stride-16 level cannot reach them.
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(200, 2, generator=g) * 290
    small = torch.cat([corners, corners + 20], dim=1)
    reach = {label: float((box_iou(small, boxes).max(dim=1).values >= 0.5).float().mean())
             for label, boxes in (("plain", plain_boxes), ("finer", finer_boxes))}
    assert reach["plain"] < 0.05 and reach["finer"] > 0.9, reach


def test_stride8_level_learns_and_detects():
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilenet_v3_small", num_classes=3, image_size=64, finest_stride=8)
    losses = fit_steps(model, 64, steps=8, lr=0.02)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert_valid_detections(model, 3, 50, 70)
    with pytest.raises(ValueError, match="finest_stride must be 8 or 16"):
        create_model("ssdlite_mobilenet_v3_small", num_classes=3, finest_stride=4)


# ----- `visiondoctor compare`: intervals and the paired test --------------------------------------
def write_evaluated_run(root: Path, name: str, gt: dict, predictions: list[dict]) -> Path:
    """A run directory as `eval` leaves it: config.yaml, gt.json, predictions.json and the metrics.json
    they give."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": name, "task": "detection", "data": {"path": "shapes"},
                                                     "model": {"name": "ssdlite_mobilenet_v3_small"}}))
    (run / "gt.json").write_text(json.dumps(gt))
    (run / "predictions.json").write_text(json.dumps(predictions))
    (run / "metrics.json").write_text(json.dumps(evaluate_detections(gt, predictions)))
    return run


def test_compare_prints_intervals_and_marks_significant_differences(tmp_path, capsys):
    gt = ground_truth(60, seed=7)
    good = write_evaluated_run(tmp_path, "good", gt, results(gt, recall=0.9, seed=1))
    poor = write_evaluated_run(tmp_path, "poor", gt, results(gt, recall=0.3, seed=2))
    assert main(["compare", str(poor), str(good), "--out", str(tmp_path / "cmp.html")]) == 0
    printed = capsys.readouterr().err
    good_map = json.loads((good / "metrics.json").read_text())["map"]
    assert f"{good_map:.3f} [" in printed  # mAP with its interval
    assert "good − poor" in printed and "yes" in printed and "1000 resamples" in printed
    html = (tmp_path / "cmp.html").read_text(encoding="utf-8")
    assert ">Is the difference real?</h2>" in html and "a significant difference (+" in html
    assert "mAP 95 % interval" in html


def test_compare_calls_identical_runs_no_clear_winner(tmp_path):
    gt = ground_truth(40, seed=8)
    predictions = results(gt, recall=0.7, seed=3)
    a = write_evaluated_run(tmp_path, "a", gt, predictions)
    b = write_evaluated_run(tmp_path, "b", gt, predictions)
    comparison = compare_runs([a, b], tmp_path / "same.html")
    assert comparison.significance is not None
    assert not comparison.significance.difference("a", "b", "map").significant
    assert "no clear winner on accuracy" in comparison.path.read_text(encoding="utf-8")
    # predictions.json from another evaluation than metrics.json: no interval, and the report says why
    (b / "predictions.json").write_text(json.dumps(results(gt, recall=0.2, seed=4)))
    stale = compare_runs([a, b], tmp_path / "stale.html")
    assert stale.significance is None and "metrics.json says" in stale.no_significance_reason
    assert "No confidence intervals" in stale.path.read_text(encoding="utf-8")
