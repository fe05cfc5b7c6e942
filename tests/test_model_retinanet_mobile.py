"""retinanet_mobilenet_v3_large_fpn: registered by its module alone, trains through the run pipeline, and the
doctor and the prior fit find its anchors by measurement (strides 16, 32, 64)."""
import json

import pytest
import torch

from tests.tinyruns import train_tiny_run
from visiondoctor.doctor.priors import discover_priors
from visiondoctor.models.detection import WeightsUnavailable
from visiondoctor.models.registry import available_models, create_model, get_entry
from visiondoctor.models.retinanet_mobile import NAME


def test_registered_as_a_detector():
    assert NAME in available_models("detection") and get_entry(NAME).task == "detection"
    with pytest.raises(WeightsUnavailable, match="no COCO-pretrained detector weights"):
        create_model(NAME, num_classes=3, pretrained=True)


def test_priors_are_measured_on_three_levels():
    torch.manual_seed(0)
    model = create_model(NAME, num_classes=3, image_size=128).eval()
    priors = discover_priors(model, lambda m, x: m(x), [torch.rand(3, 128, 128)])
    assert priors is not None
    assert {round(level.spacing[0]) for level in priors.levels} == {16, 32, 64}  # the prior grids' strides
    assert len(priors.levels) == 27  # 3 levels x 3 scales x 3 aspect ratios


def test_trains_and_is_diagnosed(tmp_path):
    run = train_tiny_run(tmp_path, NAME, epochs=1)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and metrics["map"] >= 0.0
    priors = json.loads((run / "priors.json").read_text())
    assert priors["generators"][0]["kind"] == "anchors" and len(priors["generators"][0]["feature_hw"]) == 3
    findings = json.loads((run / "diagnosis.json").read_text())
    assert not [f for f in findings if f["severity"] == "error"], findings
