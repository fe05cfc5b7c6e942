"""What a trained detector outputs: foreground-score distribution vs the threshold (collapse to
background), detections per image, and box-regression magnitudes vs the box coder's range.

`measure_detector_outputs` runs one eval forward on a batch and reads the raw head outputs of
torchvision's dense detectors (SSD/SSDLite, RetinaNet, FCOS) or Faster R-CNN's box predictor;
for other models it falls back to the scores of the returned detections. These checks judge a
*trained* model: at initialisation the scores are whatever the init makes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision.ops import box_iou

from visiondoctor.doctor import hooks, introspect
from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.model_io import ModelIO
from visiondoctor.doctor.probe import model_device, to_device

AUROC_COLLAPSED = 0.75  # object anchors barely outrank background ones: the classifier does not see objects
CONSTANT_SPREAD = 0.05  # p99 - p1 of the foreground score below this: one score everywhere
ALL_ANCHORS_FRACTION = 0.5  # more than half the locations above threshold: the threshold selects nothing
REG_BEYOND_WARNING = 0.01
REG_BEYOND_ERROR = 0.10
QS = (0.0, 0.01, 0.5, 0.99, 1.0)
HIST_BINS = 20


@dataclass
class OutputStats:
    threshold: float
    source: str  # "dense-head" | "roi-head" | "detections"
    num_images: int = 0
    fg_quantiles: list[float] = field(default_factory=list)  # QS over every location (or every detection)
    per_image_max: list[float] = field(default_factory=list)
    frac_locations_above: float | None = None
    detections_at_threshold: list[int] = field(default_factory=list)
    gt_per_image: list[int] = field(default_factory=list)
    auroc: float | None = None  # foreground score of anchors on objects (IoU >= 0.5) vs the others
    reg: dict[str, Any] | None = None
    step: int | None = None
    fg_histogram: list[int] = field(default_factory=list)  # HIST_BINS counts over [0, 1]

    def to_evidence(self) -> dict[str, Any]:
        ev: dict[str, Any] = {"threshold": self.threshold, "source": self.source, "images": self.num_images}
        if self.fg_quantiles:
            ev["fg_prob_range"] = [self.fg_quantiles[1], self.fg_quantiles[3]]
            ev["fg_prob_max"] = self.fg_quantiles[4]
        ev[f"detections_at_{self.threshold:g}"] = sum(self.detections_at_threshold)
        if self.detections_at_threshold:
            ev["detections_per_image_mean"] = round(sum(self.detections_at_threshold) / len(self.detections_at_threshold), 1)
        if self.gt_per_image:
            ev["ground_truth_per_image_mean"] = round(sum(self.gt_per_image) / len(self.gt_per_image), 1)
        if self.frac_locations_above is not None:
            ev["fraction_of_locations_above_threshold"] = round(self.frac_locations_above, 4)
        if self.auroc is not None:
            ev["auroc_object_vs_background_locations"] = round(self.auroc, 3)
        if self.step is not None:
            ev["step"] = self.step
        return ev


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float | None:
    """Probability that a random positive outranks a random negative (Mann-Whitney U / (n_pos n_neg)).
    Hand-written because it is three lines and the project has no metrics library for it."""
    if pos.numel() == 0 or neg.numel() == 0:
        return None
    scores = torch.cat([pos, neg]).double()
    ranks = torch.empty_like(scores)
    order = torch.argsort(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    # average ranks over ties so a constant classifier scores exactly 0.5
    uniq, inverse = torch.unique(scores, return_inverse=True)
    sums = torch.zeros_like(uniq).index_add_(0, inverse, ranks)
    counts = torch.zeros_like(uniq).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    u = ranks[: pos.numel()].sum() - pos.numel() * (pos.numel() + 1) / 2
    return float(u / (pos.numel() * neg.numel()))


def _histogram(t: torch.Tensor) -> list[int]:
    return [int(v) for v in torch.histc(t.flatten().float().clamp(0, 1), bins=HIST_BINS, min=0.0, max=1.0)] if t.numel() else []


def _quantiles(t: torch.Tensor) -> list[float]:
    t = t.flatten().float()
    if t.numel() > 1_000_000:
        t = t[torch.randperm(t.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    return [round(float(v), 4) for v in torch.quantile(t, torch.tensor(QS))] if t.numel() else []


def measure_detector_outputs(model: nn.Module, images: Any, targets: Any = None, threshold: float = 0.5,
                             io: ModelIO | None = None) -> OutputStats:
    """Score and regression statistics of one eval forward on `images` (state preserved)."""
    io = io or ModelIO("detection")
    device = model_device(model)
    images, targets = to_device(images, targets, device)
    dense = introspect.dense_parts(model)
    roi_heads = getattr(model, "roi_heads", None)
    predictor = getattr(roi_heads, "box_predictor", None) if roi_heads is not None else None
    watch: list[tuple[str, nn.Module]] = []
    if dense is not None:
        watch.append(("dense", getattr(model, dense.head_name)))
    elif predictor is not None:
        watch.append(("roi", predictor))
    transform = getattr(model, "transform", None)
    if isinstance(transform, nn.Module):
        watch.append(("transform", transform))
    with hooks.preserved_state(model), torch.no_grad():
        model.eval()
        with hooks.capture_outputs(watch) as out, hooks.record_anchors(model) as anchor_recs:
            dets = io.predict(model, images)
    stats = OutputStats(threshold=threshold, source="detections", num_images=len(dets))
    stats.detections_at_threshold = [int((d["scores"] >= threshold).sum()) for d in dets]
    if targets is not None:
        stats.gt_per_image = [int(t["boxes"].shape[0]) for t in targets]
    if "dense" in out and dense is not None:
        _dense_stats(stats, out["dense"], dense, anchor_recs, out.get("transform"), images, targets)
    elif "roi" in out and roi_heads is not None:
        _roi_stats(stats, out["roi"], roi_heads.box_coder)
    else:
        scores = torch.cat([d["scores"].float().cpu() for d in dets]) if dets else torch.zeros(0)
        stats.fg_quantiles, stats.fg_histogram = (_quantiles(scores), _histogram(scores)) if scores.numel() else ([], [])
        stats.per_image_max = [float(d["scores"].max()) if d["scores"].numel() else 0.0 for d in dets]
    return stats


def _fg_scores(head_out: dict, dense: introspect.DenseParts) -> torch.Tensor:
    logits = head_out["cls_logits"].float()
    if dense.softmax:
        return torch.softmax(logits, -1)[..., 1:].max(-1).values
    prob = torch.sigmoid(logits)
    if dense.centerness and "bbox_ctrness" in head_out:
        prob = torch.sqrt(prob * torch.sigmoid(head_out["bbox_ctrness"].float()))
    return prob[..., 1:].max(-1).values if prob.shape[-1] > 1 else prob[..., 0]


def _dense_stats(stats: OutputStats, head_out: dict, dense: introspect.DenseParts, anchor_recs: list,
                 transformed: Any, images: Any, targets: Any) -> None:
    fg = _fg_scores(head_out, dense).cpu()  # [N, L]
    stats.source = "dense-head"
    stats.fg_quantiles, stats.fg_histogram = _quantiles(fg), _histogram(fg)
    stats.per_image_max = [float(v) for v in fg.max(-1).values]
    stats.frac_locations_above = float((fg >= stats.threshold).float().mean())
    if not dense.centerness:  # FCOS regresses distances with a linear coder: no clamp range
        stats.reg = _regression_stats(head_out["bbox_regression"].float().cpu(), dense.box_coder, fg)
    if targets is not None and anchor_recs:
        pos, neg = [], []
        sizes = transformed[0].image_sizes if isinstance(transformed, tuple) and hasattr(transformed[0], "image_sizes") else None
        for i, (anchors, t) in enumerate(zip(anchor_recs[0].anchors, targets)):
            gt = t["boxes"].float().cpu()
            if gt.numel() == 0 or anchors.shape[0] != fg.shape[1]:
                continue
            if sizes is not None:
                (nh, nw), (oh, ow) = sizes[i], images[i].shape[-2:]
                gt = gt * torch.tensor([nw / ow, nh / oh, nw / ow, nh / oh])
            on_object = box_iou(anchors.float().cpu(), gt).max(1).values >= 0.5
            pos.append(fg[i][on_object])
            neg.append(fg[i][~on_object])
        if pos:
            stats.auroc = auroc(torch.cat(pos), torch.cat(neg))


def _roi_stats(stats: OutputStats, pred_out: Any, box_coder: Any) -> None:
    class_logits, box_regression = pred_out
    prob = torch.softmax(class_logits.float(), -1)
    fg = prob[:, 1:].max(-1).values.cpu()
    stats.source = "roi-head"
    stats.fg_quantiles, stats.fg_histogram = _quantiles(fg), _histogram(fg)
    stats.frac_locations_above = float((fg >= stats.threshold).float().mean()) if fg.numel() else None
    stats.reg = _regression_stats(box_regression.float().reshape(box_regression.shape[0], -1, 4).cpu(), box_coder, fg)


def _regression_stats(reg: torch.Tensor, box_coder: Any, fg: torch.Tensor) -> dict[str, Any] | None:
    weights = introspect.coder_weights(box_coder)
    clip = introspect.coder_clip(box_coder)
    if weights is None or clip is None or reg.numel() == 0:
        return None
    d = reg.reshape(-1, 4) / torch.tensor(weights)
    beyond = (d[:, 2:].abs() > clip).any(1) | (d[:, :2].abs() > clip).any(1)
    k = min(100, fg.numel())
    top = torch.topk(fg.flatten(), k).indices if k else torch.zeros(0, dtype=torch.long)
    per_loc = d.shape[0] // max(fg.numel(), 1)
    top_d = d.reshape(fg.numel(), per_loc, 4)[top].reshape(-1, 4) if per_loc >= 1 and d.shape[0] == fg.numel() * per_loc else d[:0]
    top_beyond = ((top_d.abs() > clip).any(1)).float().mean() if top_d.numel() else torch.tensor(0.0)
    return {"coder_clip": round(clip, 3), "coder_weights": list(weights),
            "delta_abs_quantiles_0_50_99_100": [round(float(v), 3) for v in torch.quantile(d.abs().flatten()[:1_000_000], torch.tensor([0.0, 0.5, 0.99, 1.0]))],
            "delta_range": [round(float(d.min()), 3), round(float(d.max()), 3)],
            "fraction_beyond_clip": round(float(beyond.float().mean()), 4),
            "fraction_beyond_clip_top_scoring": round(float(top_beyond), 4)}


@check("monitor", "evaluation", order=50, findings=[FindingDoc(
    "output.background-collapse", "the classifier predicts background everywhere",
    "the foreground score of every location (raw head outputs) or detection: none reaching the threshold, the "
    "p1-p99 spread, and the AUROC of locations on objects against the others",
    needs="torchvision dense heads / box predictor for the per-location scores and the error level; else the "
          "returned detections", severity="error when nothing reaches the threshold and objects do not outrank "
          "background (AUROC < 0.75) or the score is constant; warning when nothing reaches it otherwise")])
def check_background_collapse(stats: OutputStats) -> list[Finding]:
    """output.background-collapse: no location reaches the threshold, or one score everywhere."""
    if not stats.fg_quantiles:
        return []
    if stats.gt_per_image and sum(stats.gt_per_image) == 0:
        return []
    ev = stats.to_evidence()
    none_above = all(m < stats.threshold for m in stats.per_image_max) and sum(stats.detections_at_threshold) == 0
    spread = stats.fg_quantiles[3] - stats.fg_quantiles[1]
    blind = stats.auroc is not None and stats.auroc < AUROC_COLLAPSED
    # only raw per-location scores can show a constant classifier; post-NMS top scores are a selection
    constant = (spread < CONSTANT_SPREAD and stats.source != "detections"
                and (stats.auroc is None or stats.auroc < AUROC_COLLAPSED))
    lo, hi = stats.fg_quantiles[1], stats.fg_quantiles[3]
    if none_above:
        collapsed = blind or constant  # measured: objects do not outrank background, or one score everywhere
        return [Finding(
            id="output.background-collapse", severity="error" if collapsed else "warning",
            title=(f"The classifier predicts background everywhere: foreground scores {lo:.2f}-{hi:.2f}, none reaches "
                   f"the threshold {stats.threshold:g}, so there are 0 detections" if collapsed else
                   f"No detection reaches the threshold {stats.threshold:g} (foreground scores {lo:.2f}-{hi:.2f})"
                   + (", although objects score higher than background" if stats.auroc is not None else "")),
            evidence=ev,
            cause=("The classifier learned the average positive rate, not where objects are — typical when positives are "
                   "assigned without regard to the objects (see assignment.low-iou-positives) or when the loss is "
                   "dominated by background." if collapsed else
                   "Training is short, or the threshold is high for this model's calibration."),
            fix=("Fix the target assignment first (IoU matching), then check the classification loss's positive/negative "
                 "balance (hard-negative mining or focal loss). Lowering the threshold only hides the problem."
                 if collapsed else
                 "Train longer, or choose the threshold on the validation split (the score histogram shows where objects lie)."),
            where=stats.source)]
    if constant:
        return [Finding(
            id="output.background-collapse", severity="error",
            title=f"The classifier gives every location the same foreground score ({lo:.2f}-{hi:.2f}): it does not see objects",
            evidence=ev,
            cause="A constant score means the classifier learned only the prior; usually the positives it was trained on "
                  "do not correspond to the objects.",
            fix="Check the target assignment (assignment.low-iou-positives) and that labels reach the loss.",
            where=stats.source)]
    return []


@check("monitor", "evaluation", order=51, findings=[FindingDoc(
    "output.detections-per-image", "detections per image are implausible for the threshold",
    "the share of locations above the threshold, and detections per image against objects per image",
    needs="the contract only (per-location share: torchvision heads)",
    severity="error when more than half the locations pass; warning above max(10 x objects, 20) per image")])
def check_detections_per_image(stats: OutputStats) -> list[Finding]:
    """output.detections-per-image: the threshold keeps (nearly) every location, or far more boxes than objects."""
    ev = stats.to_evidence()
    if stats.frac_locations_above is not None and stats.frac_locations_above > ALL_ANCHORS_FRACTION:
        return [Finding(
            id="output.detections-per-image", severity="error",
            title=f"{stats.frac_locations_above:.0%} of all locations score above the threshold {stats.threshold:g}: "
                  "the threshold selects nothing",
            evidence=ev,
            cause="Scores are nearly constant across locations, so any threshold keeps all of them or none.",
            fix="Do not tune the threshold to get boxes out; fix what makes scores constant (see output.background-collapse).",
            where=stats.source)]
    if stats.detections_at_threshold and stats.gt_per_image and sum(stats.gt_per_image):
        dets = sum(stats.detections_at_threshold) / len(stats.detections_at_threshold)
        gts = sum(stats.gt_per_image) / len(stats.gt_per_image)
        if dets > max(10 * gts, 20):
            return [Finding(
                id="output.detections-per-image", severity="warning",
                title=f"{dets:.0f} detections per image at threshold {stats.threshold:g} for {gts:.1f} objects per image",
                evidence=ev,
                cause="Most kept boxes are not objects: low-confidence duplicates or background.",
                fix="Raise the threshold (choose it on the validation split) or check NMS.",
                where=stats.source)]
    return []


@check("monitor", "evaluation", order=52, findings=[FindingDoc(
    "regression.out-of-range", "box-regression outputs far outside the coder's range",
    "box deltas (divided by the coder's weights) beyond the coder's clamp, over all and over the top-scoring "
    "locations", needs="a torchvision BoxCoder and dense head / box predictor",
    severity="warning above 1 % of deltas, error above 10 %")])
def check_regression_range(stats: OutputStats) -> list[Finding]:
    """regression.out-of-range: box deltas beyond the range the coder decodes without clamping."""
    reg = stats.reg
    if not reg:
        return []
    frac, top = reg["fraction_beyond_clip"], reg["fraction_beyond_clip_top_scoring"]
    if frac <= REG_BEYOND_WARNING and top <= REG_BEYOND_WARNING:
        return []
    severe = frac > REG_BEYOND_ERROR or top > REG_BEYOND_ERROR
    return [Finding(
        id="regression.out-of-range", severity="error" if severe else "warning",
        title=f"Box deltas reach {reg['delta_range'][0]:.0f}..{reg['delta_range'][1]:.0f}; {frac:.0%} are beyond the coder's "
              f"range ±{reg['coder_clip']:.2f} (typical deltas lie within about ±2)",
        evidence={**reg, "threshold": stats.threshold, **({"step": stats.step} if stats.step is not None else {})},
        cause="The box regressor is trained toward targets that are not nearby boxes (positives far from their "
              "objects), or its loss is unnormalised; the coder clamps these deltas, so boxes are meaningless.",
        fix="Encode regression targets with the model's own BoxCoder against anchors that overlap the box (IoU "
            "matching); check the regression loss is averaged over positives.",
        where=stats.source)]


@check("run", order=75, findings=["output.background-collapse"])
def no_detection_at_threshold(detection_stats: dict[str, Any], threshold: float = 0.5) -> list[Finding]:
    """output.background-collapse (warning) from detection_stats.json: no image has a detection at the display
    threshold while lower thresholds keep many — the score distribution never reaches it."""
    per_image = detection_stats.get("per_image") or {}
    at = per_image.get(f"{threshold:g}")
    low = per_image.get(min(per_image, key=float)) if per_image else None
    if not at or not low or at.get("zero_share") != 1.0 or not low.get("mean"):
        return []
    return [Finding(
        id="output.background-collapse", severity="warning",
        title=f"No image has a detection at score {threshold:g}, although {low['mean']:.0f} per image pass a lower threshold",
        evidence={"detections_per_image": per_image, "score_max": detection_stats.get("score_max"),
                  "num_images": detection_stats.get("num_images")},
        cause="The classifier's scores stay below the threshold: too little training, or a classifier that did not learn "
              "where objects are (check assignment.low-iou-positives and the score histogram).",
        fix="If training was short, train longer; otherwise fix the assignment/loss balance rather than lowering the threshold.",
        where="detection_stats.json")]
