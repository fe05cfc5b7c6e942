"""Whole-split mIoU from a streamed confusion matrix, against a direct set computation."""
from __future__ import annotations

import pytest
import torch

from visiondoctor.evaluation.segmentation import ConfusionMatrix

IGNORE = 255


def _direct_iou(preds, targets, k, exclude=()):
    """IoU per class from pixel sets pooled over all images."""
    inter, union = [0] * k, [0] * k
    for p, t in zip(preds, targets):
        for pv, tv in zip(p.flatten().tolist(), t.flatten().tolist()):
            if tv == IGNORE or tv in exclude:
                continue
            for c in range(k):
                inter[c] += pv == c and tv == c
                union[c] += pv == c or tv == c
    return [i / u if u else None for i, u in zip(inter, union)]


def _hand_made():
    t1 = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 1], [IGNORE, 2, 2, 3]])
    p1 = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 1], [2, 2, 2, 2]])
    t2 = torch.tensor([[1, 1, 1], [3, 3, 0]])
    p2 = torch.tensor([[1, 1, 0], [3, 2, 0]])
    t3 = torch.tensor([[4, 4], [0, 0]])  # 4 = anomaly label, excluded from the closed-set metric
    p3 = torch.tensor([[0, 1], [0, 0]])
    return [p1, p2, p3], [t1, t2, t3]


def test_pooled_miou_per_class_and_pixel_accuracy_match_direct_computation() -> None:
    preds, targets = _hand_made()
    cm = ConfusionMatrix(4, IGNORE, exclude_labels=[4])
    for p, t in zip(preds, targets):
        cm.update(p, t)
    out = cm.compute(["a", "b", "c", "d"], total_images=3)
    want = _direct_iou(preds, targets, 4, exclude=(4,))
    for name, w in zip("abcd", want):
        assert out["per_class"][name]["iou"] == pytest.approx(w, abs=1e-6)
    assert out["miou"] == pytest.approx(sum(want) / 4, abs=1e-6)
    valid = [(p, t) for P, T in zip(preds, targets) for p, t in zip(P.flatten().tolist(), T.flatten().tolist())
             if t not in (IGNORE, 4)]
    assert out["pixel_accuracy"] == pytest.approx(sum(p == t for p, t in valid) / len(valid), abs=1e-6)
    assert out["evaluated_pixels"] == len(valid) and out["ignored_pixels"] == 1 and out["excluded_pixels"] == 2
    assert "subset" not in out and out["num_images"] == 3


def test_per_image_distribution_is_reported_beside_the_pooled_figure() -> None:
    preds, targets = _hand_made()
    cm = ConfusionMatrix(4, IGNORE, exclude_labels=[4])
    for p, t in zip(preds[:2], targets[:2]):
        cm.update(p, t)
    out = cm.compute(["a", "b", "c", "d"], total_images=3)
    per = []
    for p, t in zip(preds[:2], targets[:2]):
        ious = [x for x in _direct_iou([p], [t], 4) if x is not None]
        per.append(sum(ious) / len(ious))
    dist = out["per_image_miou"]
    assert dist["n"] == 2 and dist["mean"] == pytest.approx(sum(per) / 2, abs=1e-6)
    assert dist["min"] == pytest.approx(min(per)) and dist["max"] == pytest.approx(max(per))
    assert dist["mean"] != pytest.approx(out["miou"], abs=1e-3)  # the two figures really differ here
    assert out["subset"] == {"evaluated_images": 2, "total_images": 3}


def test_batched_update_equals_one_by_one_and_bad_labels_refused() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 5, (4, 9, 11), generator=g)
    p = torch.randint(0, 5, (4, 9, 11), generator=g)
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(p, t)
    for i in range(4):
        b.update(p[i], t[i])
    assert torch.equal(a.matrix, b.matrix) and a.per_image == b.per_image
    with pytest.raises(ValueError, match="outside 0..4"):
        a.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7))
