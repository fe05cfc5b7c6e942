"""Models written as a user would write them (tests/user_models/), through the --model-file path."""
import json
from pathlib import Path

import pytest
import torch

from visiondoctor.doctor.diagnose import UserCodeError, diagnose, load_factory, load_loss
from visiondoctor.doctor.zoo.common import ListDataset, masks_from_squares, squares

USER = Path(__file__).parent / "user_models"


@pytest.mark.parametrize("spec", ["centernet_detector.py:build", "yolo_style_detector.py:build"])
def test_user_detectors_are_diagnosed(spec, tmp_path):
    factory = load_factory(f"{USER / spec}")
    findings = diagnose(factory, ListDataset(squares(12, seed=0)), val_data=ListDataset(squares(8, seed=1)),
                        num_classes=3, steps=30, overfit_steps=100, out_dir=tmp_path)
    assert not [f for f in findings if f.id == "check.failed"], [(f.id, f.title) for f in findings]
    assert not [f for f in findings if f.id == "fit.overfit-one-batch"]  # a healthy model memorises 4 images
    written = json.loads((tmp_path / "diagnosis.json").read_text())
    assert [d["id"] for d in written] == [f.id for f in findings]
    assert (tmp_path / "diagnosis.md").read_text().startswith("# ")


def test_user_segmenter_with_loss_file(tmp_path):
    spec = str(USER / "unet_segmenter.py")
    kw = dict(size=32, min_side=6, max_side=14)
    data = ListDataset(masks_from_squares(squares(12, seed=0, **kw)))
    findings = diagnose(load_factory(f"{spec}:build"), data, task="segmentation", num_classes=3,
                        val_data=ListDataset(masks_from_squares(squares(8, seed=1, **kw))),
                        loss_fn=load_loss(f"{spec}:dice_ce_loss"), steps=20, overfit_steps=60, out_dir=tmp_path)
    assert not [f for f in findings if f.severity == "error" or f.id == "check.failed"], findings


def test_bug_in_a_user_model_is_found(tmp_path):
    """The same user detector with a head the loss never reads: the doctor names the module."""
    factory = load_factory(f"{USER / 'yolo_style_detector.py'}:build")

    def broken(num_classes):
        model = factory(num_classes)
        model.extra_head = torch.nn.Conv2d(32, 8, 1)  # built, never used in forward
        return model

    findings = diagnose(broken, ListDataset(squares(8, seed=0)), num_classes=3, steps=5, overfit_steps=5)
    no_grad = [f for f in findings if f.id == "params.no-gradient"]
    assert no_grad and no_grad[0].where == "extra_head"


def test_bad_model_file_specs(tmp_path):
    with pytest.raises(UserCodeError, match="expected path.py:function"):
        load_factory("no_colon.py")
    with pytest.raises(UserCodeError, match="not found"):
        load_factory(f"{tmp_path / 'missing.py'}:build")
    (tmp_path / "m.py").write_text("x = 1\n")
    with pytest.raises(UserCodeError, match="no callable 'build'"):
        load_factory(f"{tmp_path / 'm.py'}:build")
