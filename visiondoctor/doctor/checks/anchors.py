"""Priors (anchors, default boxes) against the data and the image they tile; the IoU of the positives
a matcher picks; whether the loss's assignment follows the objects at all.

The priors are found by measurement (visiondoctor.doctor.priors), whatever holds them. Best
possible recall (BPR): the share of ground-truth boxes that some prior overlaps at IoU >= 0.5, the
positive threshold of SSD and RetinaNet's matchers; a box no prior reaches is learned only through
a forced low-quality match, or not at all. It is computed by the same functions as the run's prior fit
(models.anchor_fit.max_iou, reached_share), so the figure here and priors.json's agree on the same boxes.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.hooks import MatchStats
from visiondoctor.doctor.priors import Priors, boxes_in_frame
from visiondoctor.doctor.probe import Observation
from visiondoctor.models.anchor_fit import IOU_THRESHOLD, max_iou, reached_share

# IoU matchers: at >= 0.5 a prior is a positive (SSD, RetinaNet), below 0.4 (RetinaNet) or 0.3 (RPN) it is
# background; an object whose best prior lies below these is learned only through a forced match.
NEGATIVE_IOU = 0.4
UNREACHABLE_IOU = 0.3
WARN_SHARE = 0.1
STRIDE_TOLERANCE = 0.1  # relative disagreement between the span of a prior grid and the image
LOW_IOU = 0.1  # a "positive" that barely touches its object
LOW_IOU_FRACTION_ERROR = 0.25


def _sizes(boxes: torch.Tensor) -> torch.Tensor:
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return (wh[:, 0] * wh[:, 1]).sqrt()


def _q(t: torch.Tensor, qs: tuple[float, ...] = (0.0, 0.1, 0.5, 0.9, 1.0)) -> list[float]:
    if t.numel() == 0:
        return []
    return [round(float(v), 2) for v in torch.quantile(t.float(), torch.tensor(qs))]


def ground_truth_in_prior_frame(obs: Observation, priors: Priors) -> list[torch.Tensor]:
    """The probe batch's boxes in the frame the priors live in."""
    if obs.gt_in_model_frame:
        return obs.gt_boxes
    return [boxes_in_frame(b, hw, priors.frame_hw) for b, hw in zip(obs.gt_boxes, obs.input_hw)]


def best_prior_iou(priors: Priors, gt_boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(best IoU of each ground-truth box with any prior, the boxes), over the batch."""
    boxes = [g for g in gt_boxes if g.numel()]
    if not boxes:
        return torch.zeros(0), torch.zeros(0, 4)
    gt = torch.cat(boxes)
    return max_iou(priors.boxes, gt), gt


@check("probe", order=20, findings=[FindingDoc(
    "anchors.coverage", "the priors cannot reach the ground-truth boxes",
    "the best IoU of every ground-truth box (in the frame the priors live in) with the model's priors, found by "
    "measurement: the [N, 4] box sets its forward uses that do not depend on the image (a buffer, a tensor "
    "attribute, an anchor module's or a helper function's output); best possible recall at IoU 0.5 as evidence",
    needs="the contract only (priors are found in the forward, whatever holds them; none for anchor-free models)",
    severity=f"error when more than half the objects have best IoU < {UNREACHABLE_IOU} (reachable only by forced "
             f"matches); warning when more than {WARN_SHARE:.0%} have best IoU < {NEGATIVE_IOU} (where IoU matchers "
             "call a prior background); otherwise info, with the measured best possible recall on record")])
def check_anchor_coverage(obs: Observation) -> list[Finding]:
    """anchors.coverage on the measured priors and the probe batch's boxes."""
    priors = obs.priors
    if obs.task != "detection" or priors is None or priors.point_grid:
        return []
    best, gt = best_prior_iou(priors, ground_truth_in_prior_frame(obs, priors))
    if best.numel() == 0:
        return []
    unreachable = float((best < UNREACHABLE_IOU).float().mean())
    weak = float((best < NEGATIVE_IOU).float().mean())
    gt_sizes = _sizes(gt)
    prior_sizes = _sizes(priors.boxes)
    bpr = reached_share(best, IOU_THRESHOLD)
    evidence = {
        f"best_possible_recall_iou_{IOU_THRESHOLD}": round(bpr, 3), f"share_best_iou_below_{NEGATIVE_IOU}": round(weak, 3),
        f"share_best_iou_below_{UNREACHABLE_IOU}": round(unreachable, 3), "num_boxes": int(gt.shape[0]),
        "best_iou_quantiles_0_10_50_90_100": _q(best), "box_size_px_quantiles_0_10_50_90_100": _q(gt_sizes),
        "prior_size_px_quantiles_0_10_50_90_100": _q(prior_sizes), "priors": int(priors.boxes.shape[0]),
        "prior_frame_hw": list(priors.frame_hw), "prior_format_found": priors.source_format,
        "prior_grid_spacing_per_shape": sorted({lv.spacing[0] for lv in priors.levels}),
    }
    if unreachable <= 0.5 and weak <= WARN_SHARE:
        return [Finding(
            id="anchors.coverage", severity="info",
            title=f"The priors reach {bpr:.0%} of the probe batch's {int(gt.shape[0])} objects at IoU "
                  f"{IOU_THRESHOLD} (best possible recall); {weak:.0%} have no prior above IoU {NEGATIVE_IOU}",
            evidence=evidence,
            cause="Measured before the first step on the probe batch, in the frame the priors live in; the run's "
                  "priors.json has the same measure over the whole training split.",
            fix="Nothing to fix: the priors reach the objects.",
            where="priors")]
    small = float(gt_sizes[best < NEGATIVE_IOU].median()) < float(prior_sizes.min()) if bool((best < NEGATIVE_IOU).any()) else False
    suggested = sorted({int(round(v)) for v in _q(gt_sizes, (0.1, 0.5, 0.9))})
    return [Finding(
        id="anchors.coverage",
        severity="error" if unreachable > 0.5 else "warning",
        title=f"The priors reach only {bpr:.0%} of the objects at IoU {IOU_THRESHOLD}; {weak:.0%} have no prior above "
              f"IoU {NEGATIVE_IOU}: " + ("the objects are smaller than the smallest prior" if small
                                         else "prior sizes or shapes do not fit the boxes"),
        evidence=evidence,
        cause="A ground-truth box becomes a positive only through a prior that overlaps it; boxes that no prior "
              "reaches are learned only through a forced low-quality match, or not at all, and the regressor must "
              "move a distant box all the way.",
        fix=f"Set the prior sizes near the box sizes (sqrt(w*h) quantiles 10/50/90%: {suggested} px in the model's "
            "input frame), add a finer level (smaller stride) for small objects, or resize images so objects are "
            "larger (visiondoctor fits the priors of its own models to the data: model.auto_priors).",
        where="priors")]


@check("probe", order=21, findings=[FindingDoc(
    "anchors.stride-mismatch", "the prior grid does not line up with the image it should tile",
    "for each prior shape, the spacing of the prior centres and the span the grid covers, against the frame "
    "the priors live in (a grid laid with a stride other than the feature map's spans more or less than the image)",
    needs="the contract only (priors found in the forward)", severity="error")])
def check_anchor_strides(obs: Observation) -> list[Finding]:
    """anchors.stride-mismatch: prior grids that tile more or less than the image."""
    priors = obs.priors
    if obs.task != "detection" or priors is None:
        return []
    h, w = priors.frame_hw
    bad = [{"prior_size": [round(v, 1) for v in lv.size], "feature_hw": [lv.grid[1], lv.grid[0]],
            "measured_stride": round(w / lv.grid[0], 2), "anchor_spacing": round(lv.spacing[0], 2),
            "fraction_of_width_tiled": round(lv.extent[0] / w, 2), "fraction_of_height_tiled": round(lv.extent[1] / h, 2)}
           for lv in priors.levels if lv.grid[0] > 1 and lv.grid[1] > 1
           and (abs(lv.extent[0] / w - 1) > STRIDE_TOLERANCE or abs(lv.extent[1] / h - 1) > STRIDE_TOLERANCE)]
    if not bad:
        return []
    first = bad[0]
    return [Finding(
        id="anchors.stride-mismatch", severity="error",
        title=f"Prior centres are spaced {first['anchor_spacing']} px on a {first['feature_hw'][1]}x{first['feature_hw'][0]} "
              f"grid of stride {first['measured_stride']} px: they tile {first['fraction_of_width_tiled']:.0%} of the image "
              "width, so priors and feature cells do not line up",
        evidence={"levels": bad[:8], "image_hw": [h, w]},
        cause="The prior grid was built with a stride (or 'steps') that is not the feature map's real stride: the "
              "prediction made at a cell is trained against a prior somewhere else, and part of the image has none.",
        fix="Derive the prior stride from the measured feature-map size (image size / feature size), as "
            "torchvision's anchor generators do, instead of a constant.",
        where="priors")]


@check("monitor", order=40, findings=[FindingDoc(
    "assignment.low-iou-positives", "positives are matched at low IoU (or at random)",
    "the IoU of every positive a matcher object returns with the box it was assigned, read from the IoU matrix it "
    "is called with (adds detail to assignment.location-blind, which needs no matcher)",
    needs="a matcher object (a callable attribute whose type name ends in Matcher) called with an IoU matrix",
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


@check("probe", order=23, findings=[FindingDoc(
    "assignment.location-blind", "the training targets are not where the objects are (random, round-robin, fixed "
    "slots, displaced)",
    "every loss component with the true boxes and with the same boxes moved elsewhere in their images, under the "
    "same random state: a component that does not change at all has targets that ignore where the objects are; and "
    "(overfit probe) a model that fits its targets while its detections match the objects only once they are "
    "displaced (x/y swapped, mirrored), or not at all",
    needs="the contract only (images, targets -> losses)", severity="error")])
def check_location_blind_assignment(obs: Observation) -> list[Finding]:
    """assignment.location-blind from the moved-boxes experiment (visiondoctor.doctor.experiments)."""
    response = obs.assignment
    if response is None or not response.invariant:
        return []
    names = response.invariant
    return [Finding(
        id="assignment.location-blind", severity="error",
        title=f"The loss component{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)} "
              f"{'do' if len(names) > 1 else 'does'} not change when every object moves: "
              "the positives are assigned without regard to where the objects are",
        evidence=response.to_evidence(),
        cause="When the boxes move to other places of the same images, a loss whose positives are chosen by overlap "
              "with the boxes changes (other locations become positives); this one gives exactly the same value "
              "under the same random state, so its positives are drawn at random, handed out in turn, or put in "
              "fixed slots. The classifier then learns the average positive rate, not where objects are, and the "
              "box regressor is trained towards boxes far away.",
        fix="Assign positives by IoU between the priors (or grid cells) and the ground-truth boxes, e.g. "
            "torchvision.ops.box_iou with a threshold and the best prior of each box, and build the class and box "
            "targets from that match.",
        where=", ".join(names))]
