"""The two-stage detector: measured strides, fitted anchors, agnostic boxes, head growth, frozen
BatchNorm, and the doctor's verdict on the healthy model and on the seed's configuration."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from visiondoctor.data.dataset import DetectionDataset, collate_detection
from visiondoctor.data.formats import load_detection
from visiondoctor.data.samples import CategoryMap
from visiondoctor.data.synth.sketches import SKETCH_CLASSES, generate_sketches
from visiondoctor.data.transforms import detection_transforms
from visiondoctor.models.anchor_fit import (anchor_quality, best_anchor_iou, boxes_in_input_frame, fit_anchors,
                                            grid_anchors)
from visiondoctor.models.registry import create_model
from visiondoctor.models.two_stage import (feature_sizes, grow_predictor, proposal_counts, seed_configuration,
                                           set_stage_trainable, two_stage_rcnn)


@pytest.fixture(scope="module")
def sketch_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("sk")
    generate_sketches(out, seed=3, classes=SKETCH_CLASSES[:20], phase_sizes=(8, 4, 4, 4),
                      instances_per_class=(8, 3, 3, 3), num_val=0, num_test=0)
    return load_detection(out, "auto", "train")


def _batch(index, n=4):
    cmap = CategoryMap.from_categories(index.categories)
    data = DetectionDataset(index, cmap, detection_transforms(False))
    return cmap, collate_detection([data[i] for i in range(n)])


def test_strides_are_measured_from_the_backbone():
    torch.manual_seed(0)
    model = create_model("two_stage_rcnn", num_classes=5, image_size=128)
    assert model.measured_strides == {"0": 8.0, "1": 16.0}
    assert feature_sizes(model, 96) == [(12, 12), (6, 6)]
    shallow = two_stage_rcnn(num_classes=5, image_size=128, returned_layers=("layer1", "layer2"))
    assert shallow.measured_strides == {"0": 4.0, "1": 8.0}
    # default anchors follow the measured strides
    assert [s for s in shallow.rpn.anchor_generator.sizes] == [(8.0, 16.0), (16.0, 32.0)]


def test_proposal_counts_scale_with_the_image():
    small, large = proposal_counts(128), proposal_counts(800)
    assert large["rpn_pre_nms_top_n_train"] == 2000
    assert small["rpn_pre_nms_top_n_train"] < 400 and small["rpn_post_nms_top_n_train"] <= 110


def test_agnostic_and_class_specific_heads_train_and_predict():
    torch.manual_seed(0)
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 12, 50, 60], [70, 70, 110, 100]]), "labels": torch.tensor([1, 3])}] * 2
    for agnostic, outputs in ((True, 4), (False, 4 * 5)):
        model = two_stage_rcnn(num_classes=5, class_agnostic=agnostic)
        assert model.roi_heads.box_predictor.bbox_pred.out_features == outputs
        model.train()
        losses = model(images, targets)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        sum(losses.values()).backward()
        assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
        model.eval()
        with torch.no_grad():
            out = model(images)
        assert set(out[0]) == {"boxes", "scores", "labels"}


def test_grow_predictor_keeps_old_rows_and_adds_new_ones():
    torch.manual_seed(0)
    for agnostic in (True, False):
        model = two_stage_rcnn(num_classes=5, class_agnostic=agnostic)
        head = model.roi_heads.box_predictor
        old_w, old_b = head.cls_score.weight.detach().clone(), head.cls_score.bias.detach().clone()
        old_box = head.bbox_pred.weight.detach().clone()
        grow_predictor(model, 8)
        head = model.roi_heads.box_predictor
        assert head.cls_score.out_features == 8 and model.num_classes == 8
        assert torch.equal(head.cls_score.weight[:5], old_w) and torch.equal(head.cls_score.bias[:5], old_b)
        assert not torch.equal(head.cls_score.weight[5:], torch.zeros_like(head.cls_score.weight[5:]))
        if agnostic:
            assert torch.equal(head.bbox_pred.weight, old_box)  # agnostic regressor: nothing to grow
        else:
            assert head.bbox_pred.out_features == 32 and torch.equal(head.bbox_pred.weight[:20], old_box)
    with pytest.raises(ValueError, match="shrink"):
        grow_predictor(model, 4)


def test_frozen_stages_keep_batchnorm_statistics_through_train_mode():
    torch.manual_seed(0)
    model = two_stage_rcnn(num_classes=3)
    set_stage_trainable(model, "stem", False)
    set_stage_trainable(model, "layer1", False)
    model.train()
    bn = model.backbone.body.layer1[0].bn1
    assert not bn.training and model.backbone.body.layer2[0].bn1.training
    before = bn.running_mean.clone()
    targets = [{"boxes": torch.tensor([[10.0, 12, 50, 60]]), "labels": torch.tensor([1])}]
    model([torch.rand(3, 128, 128)], targets)
    assert torch.equal(bn.running_mean, before)
    set_stage_trainable(model, "layer1", True)
    assert bn.training and all(p.requires_grad for p in model.backbone.body.layer1.parameters())


def test_fast_best_iou_equals_brute_force_and_fit_beats_default_anchors(sketch_index):
    boxes = boxes_in_input_frame(sketch_index.records, 128)
    grid = [(16, 16), (8, 8)]
    default = ([(16.0, 32.0), (32.0, 64.0)], [(0.5, 1.0, 2.0)] * 2)
    brute = box_iou(boxes, grid_anchors(*default, grid, (128, 128))).max(dim=1).values
    assert torch.allclose(best_anchor_iou(*default, grid, (128, 128), boxes), brute)
    fit = fit_anchors(boxes, (128, 128), grid, baseline=default)
    assert fit.baseline_bpr == pytest.approx(anchor_quality(*default, grid, (128, 128), boxes)[0], abs=1e-4)
    assert fit.bpr >= fit.baseline_bpr  # at IoU 0.5 the default anchors may already reach every box
    assert fit.mean_best_iou > anchor_quality(*default, grid, (128, 128), boxes)[1]
    strict = fit_anchors(boxes, (128, 128), grid, iou_threshold=0.7, baseline=default)
    assert strict.bpr > strict.baseline_bpr + 0.05


def _static_findings(model, images, targets, num_classes):
    from visiondoctor.doctor import Doctor

    doc = Doctor(model, task="detection", num_classes=num_classes)
    try:
        return doc.static_checks(images, targets)
    finally:
        doc.close()


def test_doctor_passes_the_healthy_model_and_flags_the_seed_configuration(sketch_index):
    torch.manual_seed(0)
    cmap, (images, targets) = _batch(sketch_index)
    boxes = boxes_in_input_frame(sketch_index.records, 128)
    fit = fit_anchors(boxes, (128, 128), [(16, 16), (8, 8)])
    healthy = two_stage_rcnn(cmap.num_classes, anchor_sizes=fit.sizes, aspect_ratios=fit.aspect_ratios)
    set_stage_trainable(healthy, "stem", False)  # frozen for real: no bn.frozen-but-updating
    found = _static_findings(healthy, images, targets, cmap.num_classes)
    assert [f.id for f in found if f.severity == "error"] == []
    assert not {"bn.frozen-but-updating", "amp.partial", "head.class-specific-regression"} & {f.id for f in found}

    seed = _static_findings(seed_configuration(cmap.num_classes), images, targets, cmap.num_classes)
    ids = {f.id: f.severity for f in seed}
    assert ids["anchors.stride-mismatch"] == "error"
    assert ids["roi.scale-mismatch"] == "error"
    assert ids["anchors.coverage"] in ("error", "warning")
    assert ids["amp.partial"] == "warning"
    assert ids["head.class-specific-regression"] == "warning"
    assert ids["bn.frozen-but-updating"] == "warning"
