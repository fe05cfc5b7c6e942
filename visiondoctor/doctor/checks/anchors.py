"""Anchors vs data and vs the measured feature strides; the IoU of the positives the matcher picks.

Best possible recall (BPR): the fraction of ground-truth boxes that at least one anchor
overlaps at IoU >= 0.5 — the positive threshold of SSD and RetinaNet's matchers. A box no
anchor reaches can only be learned through a low-quality match, or not at all.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchvision.ops import box_iou

from visiondoctor.doctor import introspect
from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.hooks import AnchorRecord, MatchStats
from visiondoctor.doctor.probe import Observation

BPR_ERROR = 0.5  # fewer than half the objects reachable: the detector cannot learn most of them
BPR_WARNING = 0.9  # YOLOv5's autoanchor re-fits anchors below 0.98; we warn a little lower
STRIDE_TOLERANCE = 0.1  # relative disagreement between anchor spacing and feature stride
LOW_IOU = 0.1  # a "positive" that barely touches its object
LOW_IOU_FRACTION_ERROR = 0.25


def _sizes(boxes: torch.Tensor) -> torch.Tensor:
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return (wh[:, 0] * wh[:, 1]).sqrt()


def _q(t: torch.Tensor, qs: tuple[float, ...] = (0.0, 0.1, 0.5, 0.9, 1.0)) -> list[float]:
    if t.numel() == 0:
        return []
    return [round(float(v), 2) for v in torch.quantile(t.float(), torch.tensor(qs))]


def split_levels(rec: AnchorRecord, anchors: torch.Tensor) -> list[torch.Tensor]:
    """Anchors of one image split per feature level (the order torchvision generators concatenate them)."""
    counts = [h * w * a for h, w, a in rec.levels]
    if not counts or sum(counts) != anchors.shape[0]:
        return [anchors]
    return list(torch.split(anchors, counts))


def best_possible_recall(rec: AnchorRecord, gt_boxes: list[torch.Tensor], iou: float = 0.5) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(BPR, best IoU per GT box, GT boxes) for one anchor generator's output."""
    best, boxes = [], []
    per_image = rec.anchors if len(rec.anchors) == len(gt_boxes) else [rec.anchors[0]] * len(gt_boxes)  # one set shared by the batch
    for anchors, gt in zip(per_image, gt_boxes):
        if gt.numel() == 0:
            continue
        m = box_iou(gt.float(), anchors.float().cpu())
        best.append(m.max(dim=1).values)
        boxes.append(gt)
    if not best:
        return float("nan"), torch.zeros(0), torch.zeros(0, 4)
    b = torch.cat(best)
    return float((b >= iou).float().mean()), b, torch.cat(boxes)


@check("probe", order=20, findings=[FindingDoc(
    "anchors.coverage", "anchors cannot reach the ground-truth boxes (low best possible recall)",
    "best possible recall: the share of ground-truth boxes (in the frame the priors live in) that at least one of "
    "the model's own priors overlaps at IoU >= 0.5", needs="priors returned by a module named like anchor/prior or a "
    "torchvision anchor generator", severity="warning below 0.9, error below 0.5")])
def check_anchor_coverage(model: nn.Module, obs: Observation, iou: float = 0.5) -> list[Finding]:
    """anchors.coverage: BPR of the model's own anchors on the probe batch's boxes (in the frame the anchors live in)."""
    obs.require("train")
    if obs.task != "detection" or not obs.anchors or introspect.is_anchor_free(model):
        return []
    findings = []
    for rec in _one_per_module(obs.anchors):
        bpr, best, gt = best_possible_recall(rec, obs.gt_boxes, iou)
        if bpr != bpr or bpr >= BPR_WARNING:  # NaN: no boxes in the batch
            continue
        gt_sizes = _sizes(gt)
        missed = gt_sizes[best < iou]
        level_sizes = [_q(_sizes(lv), (0.0, 1.0)) for lv in split_levels(rec, rec.anchors[0].cpu())]
        strides = _level_strides(rec)
        smallest = min((s[0] for s in level_sizes if s), default=float("nan"))
        suggested = sorted({int(round(v)) for v in _q(gt_sizes, (0.1, 0.5, 0.9))})
        findings.append(Finding(
            id="anchors.coverage",
            severity="error" if bpr < BPR_ERROR else "warning",
            title=f"The anchors reach only {bpr:.0%} of the objects at IoU {iou}: "
                  + ("most objects are smaller than the smallest anchor" if missed.numel() and float(missed.median()) < smallest
                     else "anchor sizes or shapes do not fit the boxes"),
            evidence={
                "best_possible_recall": round(bpr, 3), "iou_threshold": iou, "num_boxes": int(gt.shape[0]),
                "box_size_px_quantiles_0_10_50_90_100": _q(gt_sizes),
                "missed_box_size_px_quantiles": _q(missed),
                "anchor_size_px_min_max_per_level": level_sizes,
                "measured_stride_per_level": strides,
                "best_iou_median": round(float(best.median()), 3),
            },
            cause="A ground-truth box becomes a positive only through an anchor that overlaps it; "
                  "boxes no anchor reaches at the matcher's threshold are never (or only weakly) learned.",
            fix=f"Set anchor sizes near the box sizes (sqrt(w*h) quantiles 10/50/90%: {suggested} px in the model's input frame), "
                "add a finer feature level (smaller stride) for small objects, or resize images so objects are larger.",
            where=rec.module,
        ))
    return findings


def _one_per_module(records: list[AnchorRecord]) -> list[AnchorRecord]:
    seen, out = set(), []
    for r in records:
        if r.module not in seen:
            seen.add(r.module)
            out.append(r)
    return out


def _level_strides(rec: AnchorRecord) -> list[float]:
    if rec.image_hw is None:
        return []
    return [round(rec.image_hw[1] / w, 2) for _, w, _ in rec.levels]


def _centre_spacing(level: torch.Tensor) -> float | None:
    cx = torch.unique(((level[:, 0] + level[:, 2]) / 2).round(decimals=2))
    if cx.numel() < 2:
        return None
    return float(torch.diff(torch.sort(cx).values).median())


@check("probe", order=21, findings=[FindingDoc(
    "anchors.stride-mismatch", "anchor base size or grid stride disagrees with the measured feature stride",
    "spacing of the prior centres per level against the stride measured from the feature map they tile, and the "
    "share of the image they tile", needs="priors returned by a module named like anchor/prior or a torchvision "
    "anchor generator", severity="error")])
def check_anchor_strides(model: nn.Module, obs: Observation) -> list[Finding]:
    """anchors.stride-mismatch: anchor-centre spacing per level vs the stride measured from the feature map it tiles."""
    obs.require("train")
    if obs.task != "detection" or introspect.is_anchor_free(model):
        return []
    findings = []
    for rec in _one_per_module(obs.anchors):
        if rec.image_hw is None or not rec.levels:
            continue
        levels = split_levels(rec, rec.anchors[0].cpu())
        if len(levels) != len(rec.levels):
            continue
        bad = []
        for (h, w, _a), lv in zip(rec.levels, levels):
            stride = rec.image_hw[1] / w
            spacing = _centre_spacing(lv)
            if spacing is None:
                continue
            cx = (lv[:, 0] + lv[:, 2]) / 2
            extent = float((cx.max() - cx.min() + spacing) / rec.image_hw[1])
            if abs(spacing / stride - 1) > STRIDE_TOLERANCE or extent < 1 - STRIDE_TOLERANCE:
                bad.append({"feature_hw": [h, w], "measured_stride": round(stride, 2),
                            "anchor_spacing": round(spacing, 2), "fraction_of_width_tiled": round(extent, 2)})
        if bad:
            findings.append(Finding(
                id="anchors.stride-mismatch",
                severity="error",
                title=f"Anchor centres are spaced {bad[0]['anchor_spacing']} px apart on a feature map of stride "
                      f"{bad[0]['measured_stride']} px: anchors and feature cells do not line up",
                evidence={"levels": bad, "image_hw": list(rec.image_hw)},
                cause="The anchor grid was built with a stride (or 'steps') that is not the backbone's real stride, "
                      "so the prediction at a cell is trained against an anchor somewhere else, and part of the image has no anchors.",
                fix="Derive anchor strides from the feature-map sizes (torchvision's AnchorGenerator does), or set the "
                    "generator's stride/steps to the measured strides listed in the evidence.",
                where=rec.module,
            ))
    return findings


@check("monitor", order=40, findings=[FindingDoc(
    "assignment.low-iou-positives", "positives are matched at low IoU (or at random)",
    "the IoU of every positive a matcher returns with the box it was assigned, read from the IoU matrix it is "
    "called with", needs="a matcher object (type name ending in Matcher) called with an IoU matrix",
    severity="error when more than 25 % of positives have IoU < 0.1; warning when no positive is found")])
def positives_findings(matches: Mapping[str, list[MatchStats]], match_step: int | None = None) -> list[Finding]:
    """assignment.low-iou-positives from recorded matcher calls (probe or training monitor)."""
    findings = []
    for where, stats in matches.items():
        if not stats:
            continue
        ious = torch.cat([s.positive_ious for s in stats]) if stats else torch.zeros(0)
        num_gt = sum(s.num_gt for s in stats)
        if num_gt == 0:
            continue
        per_image = [int(s.positive_ious.numel()) for s in stats if s.num_gt > 0]
        if ious.numel() == 0:
            findings.append(Finding(
                id="assignment.low-iou-positives", severity="warning",
                title="The matcher found no positive for any ground-truth box",
                evidence={"images": len(per_image), "ground_truth_boxes": num_gt, "positives": 0,
                          **({"step": match_step} if match_step is not None else {})},
                cause="No anchor/proposal overlaps a ground-truth box enough to become a positive.",
                fix="See anchors.coverage: make anchor sizes match the boxes.",
                where=where))
            continue
        low = float((ious < LOW_IOU).float().mean())
        median = float(ious.median())
        if low > LOW_IOU_FRACTION_ERROR:
            findings.append(Finding(
                id="assignment.low-iou-positives", severity="error",
                title=f"{low:.0%} of the positives barely overlap their object (IoU < {LOW_IOU}): "
                      "positives are assigned without regard to overlap (random or broken matching)",
                evidence={"positive_iou_median": round(median, 3), "positive_iou_quantiles_0_10_50_90_100": _q(ious),
                          "fraction_below_0.1": round(low, 3), "positives_per_image_mean": round(sum(per_image) / len(per_image), 1),
                          "ground_truth_boxes": num_gt, **({"step": match_step} if match_step is not None else {})},
                cause="A positive teaches the classifier 'object here' and the regressor 'move to this box'; "
                      "when positives do not overlap their box, the classifier learns the positive rate as a constant "
                      "and the box deltas grow without bound.",
                fix="Assign positives by IoU between anchors and boxes (torchvision's Matcher / SSDMatcher with "
                    "torchvision.ops.box_iou), keeping only anchors above the foreground threshold.",
                where=where))
    return findings


@check("probe", order=22, findings=["assignment.low-iou-positives"])
def check_matched_positives(obs: Observation) -> list[Finding]:
    obs.require("train")
    return positives_findings(obs.matches)
