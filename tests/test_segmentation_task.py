"""The segmentation task end to end on tiny synthetic streets: train -> metrics.json (whole split),
anomaly -> anomaly.json (every method, both aggregations), eval on a subset -> recorded as such."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from visiondoctor.config import load_config
from visiondoctor.data.synth.streets import generate_streets
from visiondoctor.data.segmentation import SegmentationDataset, segmentation_transforms
from visiondoctor.data.segmentation import load_segmentation_data as load_data
from visiondoctor.tasks.pipeline import evaluate_run, task_for, train


@pytest.fixture(scope="module")
def streets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_streets(tmp_path_factory.mktemp("streets"), num_train=8, num_val=4, num_test=4,
                            image_size=64, seed=1)["train"].parents[3]


def _cfg(root: Path, out: Path, *extra: str):
    return load_config(None, ["task=segmentation", f"data.path={root}", "model.image_size=64", "train.epochs=1",
                              "train.batch_size=4", "train.warmup_steps=1", "train.lr=0.01", f"output_dir={out}",
                              "name=tiny", "train.monitors=false", *extra])


def test_train_anomaly_and_subset_eval(streets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from visiondoctor.tasks import anomaly, pipeline

    build_report = pipeline.build_report
    for module in (anomaly, pipeline):  # the report is built once, at the end (it is the slow part)
        monkeypatch.setattr(module, "build_report", lambda run: None)
    cfg = _cfg(streets, tmp_path)
    run = train(task_for(cfg), cfg)
    metrics = json.loads(run.metrics.read_text())
    assert metrics["num_images"] == metrics["total_images"] == 4 and "subset" not in metrics
    assert set(metrics["per_class"]) == set(json.loads(run.categories.read_text())["names"][:13])
    assert 0 <= metrics["miou"] <= 1 and metrics["per_image_miou"]["n"] == 4
    history = run.history.read_text().splitlines()[0].split(",")
    assert "loss_out" in history and "loss_aux" in history
    assert "aux: 0.4" in run.config.read_text() and "deeplabv3plus_resnet18_lite" in run.config.read_text()

    result = anomaly.run_anomaly(run.path, "msp,maxlogit,energy,sml")
    assert result["anomaly_labels"] == [13] and result["images"] == 4
    for m in ("msp", "maxlogit", "energy", "sml"):
        entry = result["methods"][m]
        assert set(entry["pooled"]) >= {"auroc", "aupr", "fpr95"} and 0 <= entry["pooled"]["auroc"] <= 1
        assert entry["per_image"]["images_used"] + entry["per_image"]["images_skipped"] == 4
    assert "ignore index 255" in result["convention"]
    assert len(result["sml_stats"]["mean"]) == 13
    assert result["segmentation"]["excluded_pixels"] == result["methods"]["msp"]["pooled"]["positives"] > 0
    with np.load(run.path / "anomaly_examples.npz", allow_pickle=False) as ex:
        assert ex["gt"].shape[0] == ex["score_sml"].shape[0] >= 1

    sub = evaluate_run(run.path, split="test", max_images=2)
    assert sub["subset"] == {"evaluated_images": 2, "total_images": 4}
    # the test split's diagnosis is its own file; the validation split's diagnosis.json stays as training wrote it
    assert "eval.sample-bias" in {f["id"] for f in json.loads((run.path / "diagnosis_test.json").read_text())}

    build_report(run)
    html = run.report.read_text()
    assert "Anomaly segmentation" in html and "Segmentation metrics" in html and "SML" in html


def test_held_out_class_is_ignored_in_training_and_scored_as_anomaly(streets: Path, tmp_path: Path) -> None:
    data = load_data(_cfg(streets, tmp_path), anomaly_class=12)
    assert data.train.anomaly_labels == (12, 13) and data.num_classes == 12
    train_set = SegmentationDataset(data.train, None, train_labels=True)
    raw = SegmentationDataset(data.train, None)
    masks = [(train_set[i][1], raw[i][1]) for i in range(len(train_set))]
    assert any((m == 12).any() for _, m in masks)
    assert all(not (t == 12).any() and torch.equal(t == 255, (m == 12) | (m == 255)) for t, m in masks)


def test_joint_transforms_keep_image_and_mask_aligned() -> None:
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    image[:, :, :20] = 200  # left third bright
    mask = torch.zeros(40, 60, dtype=torch.long)
    mask[:, :20] = 5
    torch.manual_seed(0)
    t = segmentation_transforms(True, 32, augment="light")
    for _ in range(6):
        img, m = t(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert img.shape == (3, 32, 32) and m.shape == (32, 32) and m.dtype == torch.long
        bright = img[0] > 0
        assert set(m.unique().tolist()) <= {0, 5}  # nearest neighbour: no invented labels
        assert (bright == (m == 5)).float().mean() > 0.95
