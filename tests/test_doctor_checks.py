"""Each check on inputs built to trigger it, and on inputs built not to."""
import json
import math

import pytest
import torch
from torch import nn

import visiondoctor as vd
from visiondoctor.data.samples import Category, CategoryMap, DetectionIndex, DetectionRecord
from visiondoctor.doctor.checks import consistency, data, evaluation, exits, gradients, heads, losses, outputs
from visiondoctor.doctor.model_io import ModelIO
from visiondoctor.doctor.probe import run_probes
from visiondoctor.doctor.static import static_checks
from visiondoctor.doctor.zoo.common import batch, squares, tiny_ssd


def ids(findings):
    return {f.id for f in findings}


# ----- data -----------------------------------------------------------------------------------------

def test_boxes_in_xywh_are_recognised():
    t = [{"boxes": torch.tensor([[30.0, 40.0, 10.0, 12.0], [50.0, 5.0, 8.0, 20.0]]), "labels": torch.tensor([1, 2])}]
    f = data.check_targets(t, [(64, 64)])
    assert [x.id for x in f if x.severity == "error"] == ["data.box-format"]
    assert "xywh" in f[0].fix.replace("'", "").replace(" ", "") or "box_convert" in f[0].fix


def test_normalised_boxes_and_label_zero():
    t = [{"boxes": torch.tensor([[0.1, 0.1, 0.4, 0.5]]), "labels": torch.tensor([0])}]
    f = data.check_targets(t, [(64, 64)], background_label=True)
    assert {"data.box-format", "data.label-zero-background"} <= ids(f)
    assert "data.label-zero-background" not in ids(data.check_targets(t, [(64, 64)], background_label=False))


def test_good_targets_have_no_findings():
    _, targets = batch(squares(8))
    assert data.check_targets(targets, [(64, 64)] * 8, min_size=8) == []


def test_out_of_image_names_the_record():
    t = [{"boxes": torch.tensor([[10.0, 10.0, 90.0, 30.0]]), "labels": torch.tensor([1]), "image_id": 7}]
    f = [x for x in data.check_targets(t, [(64, 64)]) if x.id == "data.box-out-of-image"]
    assert f and "image id 7" in f[0].where and f[0].evidence["max_overshoot_px"] == 26.0


def _index(counts, supercategory_of_empty=True):
    cats = [Category(0, "cells", "none"), Category(1, "rbc", "cells" if supercategory_of_empty else ""), Category(2, "wbc", "cells")]
    records, ann = [], 0
    for cid, n in counts.items():
        for _ in range(n):
            records.append(DetectionRecord(ann, f"{ann}.jpg", None, 100, 100, [(1.0, 1.0, 20.0, 20.0)], [cid], [ann]))
            ann += 1
    return DetectionIndex(root=None, source="train/_annotations.coco.json", categories=cats, records=records)


def test_empty_supercategory_is_info_and_imbalance_is_measured():
    index = _index({1: 210, 2: 3})
    f = {x.id: x for x in data.check_index(index, CategoryMap.from_categories(index.categories))}
    assert f["data.empty-category"].severity == "info" and "supercategory" in f["data.empty-category"].title
    assert f["data.class-imbalance"].severity == "warning" and f["data.class-imbalance"].evidence["ratio_max_min"] == 70.0
    assert "data.label-zero-background" not in f  # CategoryMap shifts labels past 0


def test_dataset_ids_used_as_labels_hit_label_zero():
    index = _index({0: 5, 1: 5})
    cmap = CategoryMap.from_categories(index.categories, background=False)
    assert "data.label-zero-background" in ids(data.check_index(index, cmap, background_label=True))


# ----- heads ----------------------------------------------------------------------------------------

def test_fcn_aux_head_mismatch_without_num_classes():
    model = _SegHeads(5)
    obs = run_probes(model, ModelIO("segmentation"), torch.rand(2, 3, 16, 16), torch.randint(0, 5, (2, 16, 16)))
    assert ids(heads.check_head_classes(model, obs)) == set()
    model.aux_classifier[-1] = nn.Conv2d(8, 21, 1)  # the seed's bug: only classifier[-1] was resized
    obs = run_probes(model, ModelIO("segmentation"), torch.rand(2, 3, 16, 16), torch.randint(0, 5, (2, 16, 16)))
    f = heads.check_head_classes(model, obs)
    assert f and f[0].where == "aux_classifier" and f[0].evidence["outputs"] == 21 and f[0].evidence["expected"] == 5


class _SegHeads(nn.Module):
    """torchvision's FCN heads (classifier and aux_classifier) on a 1x1-conv stem."""

    def __init__(self, num_classes):
        super().__init__()
        from torchvision.models.segmentation.fcn import FCNHead

        self.stem = nn.Conv2d(3, 32, 1)
        self.classifier, self.aux_classifier = FCNHead(32, num_classes), FCNHead(32, num_classes)

    def forward(self, x):
        f = self.stem(x)
        return {"out": self.classifier(f), "aux": self.aux_classifier(f)}


def test_class_specific_regression():
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    class UserHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_score = nn.Linear(64, 11)
            self.bbox_pred = nn.Linear(64, 44)

    f = heads.check_class_specific_regression(nn.ModuleDict({"det": UserHead()}), num_classes=11)
    assert f and f[0].severity == "warning" and f[0].where == "det.bbox_pred"
    assert heads.check_class_specific_regression(nn.ModuleDict({"p": FastRCNNPredictor(64, 11)}), 11)[0].severity == "info"
    agnostic = nn.ModuleDict({"cls_score": nn.Linear(64, 11), "bbox_pred": nn.Linear(64, 4)})
    assert heads.check_class_specific_regression(agnostic, 11) == []
    from torchvision.models.detection.rpn import RPNHead

    assert heads.check_class_specific_regression(nn.ModuleDict({"rpn": RPNHead(32, 3)}), 4) == []  # 3 anchors, not classes


# ----- anchors --------------------------------------------------------------------------------------

def test_anchor_steps_that_disagree_with_the_stride():
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    model = tiny_ssd(3)
    model.anchor_generator = DefaultBoxGenerator([[2], [2]], scales=[0.25, 0.4, 0.6], steps=[4, 8])  # real strides 8, 16
    findings, _ = static_checks(model, *batch(squares(2)), num_classes=3)
    f = [x for x in findings if x.id == "anchors.stride-mismatch"]
    assert f and f[0].evidence["levels"][0]["measured_stride"] == 8.0 and f[0].evidence["levels"][0]["anchor_spacing"] == 4.0
    findings, _ = static_checks(tiny_ssd(3), *batch(squares(2)), num_classes=3)
    assert "anchors.stride-mismatch" not in ids(findings)


@pytest.mark.slow
def test_boxes_decoded_from_the_images_are_not_taken_for_priors(tmp_path):
    """Before training, a head can emit nearly the same deltas for any image: boxes decoded from them (and clipped
    to the image) then look constant across inputs, like priors, but they are computed from the images. Taken for
    priors, their clipped border rows looked like grids of the wrong stride (the demo model at 96 px)."""
    run = vd.train(config="demo", overrides=[
        "data.synth_images=16", "data.synth_options={num_val: 4, num_test: 2, image_size: 160}", "model.image_size=96",
        "train.epochs=1", "train.batch_size=8", "train.monitors=false", f"output_dir={tmp_path}", "name=demo96",
        "model.pretrained=false", "model.pretrained_backbone=false"])
    found = [f["id"] for f in json.loads((run.path / "diagnosis.json").read_text())]
    assert "anchors.stride-mismatch" not in found and "anchors.coverage" in found  # priors found and judged


def test_optimizer_missing_a_replaced_head():
    model = tiny_ssd(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.head.classification_head.module_list[0] = nn.Conv2d(32, 12, 3, padding=1)  # replaced after the optimizer
    f = gradients.check_optimizer(model, opt)
    assert f and f[0].where == "head.classification_head.module_list.0"


# ----- training histories ---------------------------------------------------------------------------

def test_loss_checks():
    assert losses.loss_balance_findings({"a": [1.0] * 60, "b": [1e-4] * 60})[0].where == "b"
    assert losses.loss_balance_findings({"a": [1.0] * 60, "b": [0.05] * 60}) == []
    flat = [1.0 + 0.01 * math.sin(i) for i in range(120)]
    assert losses.not_learning_findings(flat, list(range(120)))[0].id == "train.not-learning"
    assert losses.not_learning_findings([1.0 / (1 + i) for i in range(120)], list(range(120))) == []


def test_gradient_norm_checks():
    steps = list(range(10))
    f = gradients.grad_norm_findings({"head": [1.0] * 6 + [500.0, 1.0, 1.0, 1.0], "backbone": [1.0] * 10}, steps)
    assert [(x.id, x.where, x.evidence["step"]) for x in f] == [("grad.exploding", "head", 6)]
    f = gradients.grad_norm_findings({"head": [1.0] * 10, "backbone": [1e-9] * 10, "neck": [2.0] * 10}, steps)
    assert [(x.id, x.where) for x in f] == [("grad.vanishing", "backbone")]


# ----- outputs, consistency, evaluation, exits ------------------------------------------------------

def test_background_collapse_and_all_anchors():
    collapsed = outputs.OutputStats(0.5, "dense-head", 2, [0.41, 0.41, 0.44, 0.46, 0.46], [0.46, 0.46], 0.0, [0, 0], [3, 2], auroc=0.51)
    f = outputs.check_background_collapse(collapsed)
    # a symptom, judged by how long the model trained: inconclusive early, a warning later, an error after a long run
    assert f[0].severity == "info" and f[0].evidence["fg_prob_range"] == [0.41, 0.46]
    collapsed.step = outputs.WARN_AFTER
    assert outputs.check_background_collapse(collapsed)[0].severity == "warning"
    collapsed.step = outputs.LONG_RUN
    assert outputs.check_background_collapse(collapsed)[0].severity == "error"
    early = outputs.OutputStats(0.5, "dense-head", 2, [0.05, 0.1, 0.2, 0.4, 0.45], [0.45, 0.4], 0.0, [0, 0], [3, 2], auroc=0.9)
    assert outputs.check_background_collapse(early)[0].severity == "info"  # objects already outrank background
    everywhere = outputs.OutputStats(0.4, "dense-head", 2, [0.41, 0.41, 0.44, 0.46, 0.46], [0.46, 0.46], 1.0, [2400, 2400], [3, 2], auroc=0.5)
    assert outputs.check_detections_per_image(everywhere)[0].severity == "error"
    healthy = outputs.OutputStats(0.5, "dense-head", 2, [0.0, 0.01, 0.02, 0.7, 0.95], [0.9, 0.95], 0.002, [3, 2], [3, 2], auroc=0.97)
    assert outputs.check_background_collapse(healthy) == [] and outputs.check_detections_per_image(healthy) == []


def test_auroc():
    assert outputs.auroc(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2])) == 1.0
    assert outputs.auroc(torch.full((5,), 0.4), torch.full((50,), 0.4)) == 0.5


def test_consistency_thresholds():
    base = {"n": 200, "spearman": 0.6, "mean_iou": 0.6,
            "high_score_low_iou": {"count": 2, "share_of_high_score": 0.02, "score_threshold": 0.5, "iou_threshold": 0.3}}
    assert consistency.score_iou_findings(base) == []
    bad = {**base, "spearman": 0.05, "high_score_low_iou": {**base["high_score_low_iou"], "count": 90, "share_of_high_score": 0.9}}
    assert consistency.score_iou_findings(bad)[0].severity == "error"
    after = [{"split": "train", "step": s} for s in (50, 100)]  # a healthy detector 100 steps in may not rank yet
    early = consistency.score_iou_findings(bad, history=after)[0]
    assert early.severity == "warning" and early.evidence["trained_steps"] == 100
    assert consistency.score_iou_findings(bad, history=[{"split": "train", "step": 900}])[0].severity == "error"


def test_sample_size_ci_and_full_split():
    metrics = {"miou": 0.388, "num_images": 10, "per_image_miou": {"mean": 0.388, "std": 0.048, "n": 10},
               "subset": {"evaluated_images": 10, "total_images": 1031}}
    f = evaluation.check_sample_size(metrics)
    lo, hi = f[0].evidence["ci95_of_per_image_mean"]
    assert f[0].severity == "warning" and lo == pytest.approx(0.388 - 2.262 * 0.048 * math.sqrt(10 / 9) / math.sqrt(10) * math.sqrt(1021 / 1030), abs=1e-3)
    assert hi > 0.388 > lo
    assert evaluation.check_sample_size({"miou": 0.3, "num_images": 1031, "total_images": 1031}) == []


def test_generalization_gap_reads_the_curves():
    def hist(train, val):
        return ([{"split": "train", "epoch": i + 1, "loss": v} for i, v in enumerate(train)]
                + [{"split": "val", "epoch": i + 1, "loss": v} for i, v in enumerate(val)])

    over = evaluation.check_generalization_gap(hist([1.0, 0.6, 0.3, 0.1, 0.05], [1.0, 0.8, 0.85, 1.0, 1.2]))
    assert over[0].severity == "warning" and over[0].evidence["val_loss_min_epoch"] == 2
    gap = evaluation.check_generalization_gap(hist([0.5, 0.3, 0.2, 0.1], [1.0, 0.9, 0.8, 0.75]))
    assert gap[0].severity == "info"  # a gap, validation still improving: not overfitting
    assert evaluation.check_generalization_gap(hist([0.5, 0.3, 0.2, 0.1], [0.5, 0.3, 0.2, 0.1])) == []


def test_exit_distribution():
    conf = [[0.475, 0.6, 0.7]] * 20
    f = exits.check_exit_distribution([0] * 20, conf, [0.45, 0.45], num_exits=3)
    assert f[0].severity == "error" and f[0].evidence["exit_distribution"] == [1.0, 0.0, 0.0]
    never = exits.check_exit_distribution([2] * 20, [[0.1 + 0.01 * i, 0.2, 0.9] for i in range(20)], [0.9, 0.9], num_exits=3)
    assert never[0].severity == "warning" and "full model" in never[0].title
    spread = [0] * 7 + [1] * 7 + [2] * 6
    assert exits.check_exit_distribution(spread, [[0.1 * (i % 10), 0.5, 0.9] for i in range(20)], [0.6, 0.5]) == []


def test_every_catalogue_id_is_documented():
    from pathlib import Path

    from visiondoctor.doctor.catalogue import updated
    from visiondoctor.doctor.findings import CATALOGUE

    text = (Path(__file__).parents[1] / "docs" / "doctor.md").read_text()
    assert [k for k in CATALOGUE if f"`{k}`" not in text] == []
    assert updated(text) == text, "docs/doctor.md's table is stale: python -m visiondoctor.doctor.catalogue --update docs/doctor.md"


def test_findings_from_a_run_directory(tmp_path):
    from visiondoctor.doctor.from_run import run_findings

    rows = ["epoch,step,split,loss,miou"]
    for e, (tr, va) in enumerate([(1.0, 1.0), (0.5, 0.7), (0.3, 0.8), (0.1, 0.95)], start=1):
        rows += [f"{e},{e * 200},train,{tr},", f"{e},{e * 200},val,{va},0.4"]  # 800 steps: collapse is judged
    (tmp_path / "history.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"miou": 0.4, "num_images": 10, "total_images": 100}))
    (tmp_path / "detection_stats.json").write_text(json.dumps(
        {"num_images": 4, "per_image": {"0.05": {"mean": 100.0, "zero_share": 0.0}, "0.5": {"mean": 0.0, "zero_share": 1.0}}}))
    found = {f.id: f for f in run_findings(tmp_path)}
    assert found["fit.generalization-gap"].severity == "warning"
    assert found["eval.sample-bias"].evidence["evaluated_images"] == 10
    assert found["output.background-collapse"].severity == "warning"
    assert run_findings(tmp_path / "missing") == []
    rows = [r.replace("00,", "0,", 1) if i else r for i, r in enumerate(rows)]  # the same run after 80 steps
    (tmp_path / "history.csv").write_text("\n".join(rows) + "\n")
    early = {f.id: f for f in run_findings(tmp_path)}["output.background-collapse"]
    assert early.severity == "info"  # too early to call: few detectors score above 0.5 before ~500 steps


def test_regression_beyond_the_box_coder_range():
    model = tiny_ssd(3)
    images, targets = batch(squares(2))
    stats = outputs.measure_detector_outputs(model, images, targets, 0.5)
    assert stats.reg["fraction_beyond_clip"] == 0.0 and outputs.check_regression_range(stats) == []
    with torch.no_grad():
        for conv in model.head.regression_head.module_list:
            conv.bias.fill_(300.0)  # seed 000: deltas of 175-379 where -2..2 is normal
    stats = outputs.measure_detector_outputs(model, images, targets, 0.5)
    f = outputs.check_regression_range(stats)
    assert f[0].severity == "error" and f[0].evidence["fraction_beyond_clip"] == 1.0
    assert f[0].evidence["coder_weights"] == [10.0, 10.0, 5.0, 5.0]
