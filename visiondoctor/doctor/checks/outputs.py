"""What a trained detector outputs: foreground-score distribution vs the threshold (collapse to
background), detections per image, and box-regression magnitudes vs the box coder's range.

`measure_detector_outputs` runs one eval forward on a batch and reads the raw head outputs of
torchvision's dense detectors (SSD/SSDLite, RetinaNet, FCOS) or Faster R-CNN's box predictor;
for other models it falls back to the scores of the returned detections. These checks judge a
*trained* model: at initialisation the scores are whatever the init makes them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
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

LONG_RUN = 2000  # steps after which a model that still does not see objects will not learn to
WARN_AFTER = 500  # before this many steps a detector trained from scratch may not rank objects above background yet
DOCTOR_THRESHOLD = 0.5  # the score the output checks judge at, whatever threshold a user displays boxes at
AUROC_COLLAPSED = 0.75  # object anchors barely outrank background ones: the classifier does not see objects
CONSTANT_SPREAD = 0.05  # p99 - p1 of the foreground score below this: one score everywhere
ALL_ANCHORS_FRACTION = 0.5  # more than half the locations above threshold: the threshold selects nothing
REG_BEYOND_WARNING = 0.01
REG_BEYOND_ERROR = 0.10
QS = (0.0, 0.01, 0.5, 0.99, 1.0)
TOP_DETECTIONS = 20  # an image's best detections of a class: their scores must differ if the model looks at places
MIN_FOR_SPREAD = 10
CONSTANT_SCORES = 1e-4  # score spread among them below this: one score for every place
SIZE_MATCH_IOU = 0.1  # the detection that overlaps an object best stands for the model's box of it
# A box the right shape and place but r times the object's side has IoU r^2 (r < 1) or 1/r^2: below 0.5 beyond
# sqrt(2) either way, so it can never count at AP50 (error); below 0.64 beyond 1.25 (warning).
SIZE_ERROR, SIZE_WARNING = 2 ** 0.5, 1.25
INVERTED_ERROR = 0.1
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
    boxes: dict[str, Any] = field(default_factory=dict)  # what the returned boxes are (any detector)

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
    stats.boxes = box_statistics(dets, [(int(im.shape[-2]), int(im.shape[-1])) for im in images], targets)
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


def box_statistics(dets: list[dict], image_hw: list[tuple[int, int]], targets: Any = None,
                   top: int = TOP_DETECTIONS) -> dict[str, Any]:
    """What any detector's returned boxes are: non-finite or inverted ones, ones far outside the image, the score
    spread among an image's best detections of a class, and (with targets) the size of the detection that best
    overlaps each object relative to the object."""
    boxes = [d["boxes"].detach().float().cpu().reshape(-1, 4) for d in dets]
    scores = [d["scores"].detach().float().cpu().reshape(-1) for d in dets]
    labels = [d["labels"].detach().cpu().reshape(-1) for d in dets]
    n = sum(len(b) for b in boxes)
    out: dict[str, Any] = {"detections": n}
    if n == 0:
        return out
    allb = torch.cat(boxes)
    finite = torch.isfinite(allb).all(1)
    fb = allb[finite]
    out["nonfinite_share"] = round(float((~finite).float().mean()), 4)
    out["inverted_or_empty_share"] = round(float(((fb[:, 2] <= fb[:, 0]) | (fb[:, 3] <= fb[:, 1])).float().mean()), 4) \
        if fb.numel() else 0.0
    far = []
    for b, (h, w) in zip(boxes, image_hw):
        b = b[torch.isfinite(b).all(1)]
        if b.numel():
            far.append((b[:, 0] < -0.5 * w) | (b[:, 1] < -0.5 * h) | (b[:, 2] > 1.5 * w) | (b[:, 3] > 1.5 * h))
    out["far_outside_share"] = round(float(torch.cat(far).float().mean()), 4) if far else 0.0
    spreads = []
    for s_, l_ in zip(scores, labels):
        for label in torch.unique(l_):
            best = torch.sort(s_[l_ == label], descending=True).values[:top]
            if best.numel() >= MIN_FOR_SPREAD:
                spreads.append(float(best.max() - best.min()))
    if spreads:
        out["score_spread_top_detections_median"] = float(f"{torch.tensor(spreads).median():.3g}")
        out["score_spread_groups"] = len(spreads)
    if targets is not None:
        on, off = [], []
        for b, sc, t in zip(boxes, scores, targets):
            gt = torch.as_tensor(t["boxes"]).detach().float().cpu().reshape(-1, 4)
            if b.numel() == 0:
                continue
            hit = box_iou(b.nan_to_num(), gt).max(1).values >= 0.5 if gt.numel() else torch.zeros(len(b), dtype=torch.bool)
            on.append(sc[hit])
            off.append(sc[~hit])
        if on:
            a = auroc(torch.cat(on), torch.cat(off))
            if a is not None:
                out["detection_auroc"] = round(a, 3)
        ratios = []
        for b, t in zip(boxes, targets):
            gt = torch.as_tensor(t["boxes"]).detach().float().cpu().reshape(-1, 4)
            b = b[torch.isfinite(b).all(1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
            if gt.numel() == 0 or b.numel() == 0:
                continue
            iou = box_iou(gt, b)
            best, idx = iou.max(1)
            for g, j, v in zip(gt, idx, best):
                if float(v) >= SIZE_MATCH_IOU:
                    area_gt = float((g[2] - g[0]) * (g[3] - g[1]))
                    area_det = float((b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]))
                    if area_gt > 0:
                        ratios.append((area_det / area_gt) ** 0.5)
        if ratios:
            r = torch.tensor(ratios)
            out["matched_objects"] = len(ratios)
            out["size_ratio_median"] = round(float(r.median()), 3)
            out["size_ratio_quantiles_10_90"] = [round(float(q), 3) for q in torch.quantile(r, torch.tensor([0.1, 0.9]))]
    return out


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
    "p1-p99 spread, and the AUROC of locations (or detections) on objects against the others",
    needs="the contract only (the returned detections); torchvision dense heads / box predictor add per-location "
          "scores", severity="info (inconclusive) when nothing reaches the threshold yet objects outrank background, "
          "or before 500 steps; warning when objects still do not outrank background (AUROC < 0.75) or the score is "
          "constant after 500 steps; error after 2000")])
def check_background_collapse(stats: OutputStats) -> list[Finding]:
    """output.background-collapse: no location reaches the threshold, or one score everywhere. A symptom: after a
    short run it is inconclusive (info) unless objects do not even outrank background (warning); an error only
    after a long run (LONG_RUN steps), where it means the run will not learn."""
    if not stats.fg_quantiles:
        return []
    if stats.gt_per_image and sum(stats.gt_per_image) == 0:
        return []
    ev = stats.to_evidence()
    none_above = all(m < stats.threshold for m in stats.per_image_max) and sum(stats.detections_at_threshold) == 0
    spread = stats.fg_quantiles[3] - stats.fg_quantiles[1]
    auroc = stats.auroc if stats.auroc is not None else stats.boxes.get("detection_auroc")
    if stats.auroc is None and auroc is not None:
        ev["auroc_object_vs_other_detections"] = auroc
    blind = auroc is not None and auroc < AUROC_COLLAPSED
    # only raw per-location scores can show a constant classifier; post-NMS top scores are a selection
    constant = spread < CONSTANT_SPREAD and stats.source != "detections" and (auroc is None or blind)
    lo, hi = stats.fg_quantiles[1], stats.fg_quantiles[3]
    long_run = stats.step is not None and stats.step >= LONG_RUN
    trained = stats.step is not None and stats.step >= WARN_AFTER
    if none_above:
        collapsed = blind or constant  # measured: objects do not outrank background, or one score everywhere
        return [Finding(
            id="output.background-collapse",
            severity=("error" if long_run else "warning" if trained else "info") if collapsed else "info",
            title=(f"The classifier predicts background everywhere: foreground scores {lo:.2f}-{hi:.2f}, none reaches "
                   f"{stats.threshold:g}, and objects do not score above background" if collapsed else
                   f"Inconclusive: no detection reaches {stats.threshold:g} yet (foreground scores {lo:.2f}-{hi:.2f})"
                   + (", although objects already score above background" if auroc is not None else "")),
            evidence=ev,
            cause=("The classifier learned the average positive rate, not where objects are — typical when positives are "
                   "assigned without regard to the objects (see assignment.location-blind) or when the loss is "
                   "dominated by background." if collapsed else
                   "Early in training scores stay low; it says nothing about the model yet."),
            fix=("Fix the target assignment first (IoU matching), then check the classification loss's positive/negative "
                 "balance (hard-negative mining or focal loss). Lowering the threshold only hides the problem."
                 if collapsed else "Train longer; judge the threshold on the validation split once the model has trained."),
            where=stats.source)]
    if constant:
        return [Finding(
            id="output.background-collapse", severity="error" if long_run else "warning" if trained else "info",
            title=f"The classifier gives every location the same foreground score ({lo:.2f}-{hi:.2f}): it does not see objects",
            evidence=ev,
            cause="A constant score means the classifier learned only the prior; usually the positives it was trained on "
                  "do not correspond to the objects.",
            fix="Check the target assignment (assignment.location-blind) and that labels reach the loss.",
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
    "locations", needs="a torchvision BoxCoder and dense head / box predictor (other detectors: output.boxes-invalid "
    "judges the decoded boxes)", severity="error above 10 % of the top-scoring locations' deltas; warning above 1 % "
    "of them, or above 10 % of all deltas")])
def check_regression_range(stats: OutputStats) -> list[Finding]:
    """regression.out-of-range: box deltas beyond the range the coder decodes without clamping."""
    reg = stats.reg
    if not reg:
        return []
    frac, top = reg["fraction_beyond_clip"], reg["fraction_beyond_clip_top_scoring"]
    # the boxes a detector returns come from its best-scoring locations: deltas beyond the clamp elsewhere are never
    # decoded into an output (they are a hint, not a fault), so the verdict rests on the top-scoring ones
    if top <= REG_BEYOND_WARNING and frac <= REG_BEYOND_ERROR:
        return []
    severe = top > REG_BEYOND_ERROR
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


def steps_trained(history: Sequence[Mapping[str, Any]] | None) -> int | None:
    """The last training step a history (history.csv rows, or the monitored training's) reached; None without one."""
    return max((int(row["step"]) for row in history or () if isinstance(row.get("step"), (int, float))), default=None)


@check("run", order=75, findings=["output.background-collapse"])
def no_detection_at_threshold(detection_stats: dict[str, Any], threshold: float = 0.5,
                              history: Sequence[Mapping[str, Any]] | None = None) -> list[Finding]:
    """output.background-collapse from detection_stats.json: no image has a detection at the display threshold
    while lower thresholds keep many — the score distribution never reaches it. As the probe's verdict: a warning
    once the run trained WARN_AFTER steps (history.csv), info before (scores may simply not have risen yet)."""
    per_image = detection_stats.get("per_image") or {}
    at = per_image.get(f"{threshold:g}")
    low = per_image.get(min(per_image, key=float)) if per_image else None
    if not at or not low or at.get("zero_share") != 1.0 or not low.get("mean"):
        return []
    steps = steps_trained(history)
    early = steps is not None and steps < WARN_AFTER
    return [Finding(
        id="output.background-collapse", severity="info" if early else "warning",
        title=f"No image has a detection at score {threshold:g}, although {low['mean']:.0f} per image pass a lower "
              f"threshold" + (f" (after only {steps} steps)" if early else ""),
        evidence={"detections_per_image": per_image, "score_max": detection_stats.get("score_max"),
                  "num_images": detection_stats.get("num_images"), "trained_steps": steps},
        cause="The classifier's scores stay below the threshold: too little training, or a classifier that did not learn "
              "where objects are (check assignment.low-iou-positives and the score histogram).",
        fix="If training was short, train longer; otherwise fix the assignment/loss balance rather than lowering the threshold.",
        where="detection_stats.json")]


@check("monitor", "evaluation", order=54, findings=[FindingDoc(
    "output.boxes-invalid", "boxes that are not boxes: non-finite, inverted (x2 <= x1) or far outside the image",
    "the boxes any detector returns in eval mode: the share that are non-finite, inverted or empty, and the share "
    "reaching more than half an image beyond its border", severity=f"error for non-finite boxes or more than "
    f"{INVERTED_ERROR:.0%} inverted; warning when more than 10 % lie far outside the image")])
def check_boxes_invalid(stats: OutputStats) -> list[Finding]:
    b = stats.boxes
    if not b.get("detections"):
        return []
    bad = b.get("nonfinite_share", 0) > 0 or b.get("inverted_or_empty_share", 0) > INVERTED_ERROR
    far = b.get("far_outside_share", 0) > 0.1
    if not bad and not far:
        return []
    what = (f"{b['nonfinite_share']:.0%} non-finite" if b.get("nonfinite_share") else
            f"{b.get('inverted_or_empty_share', 0):.0%} inverted or empty (x2 <= x1 or y2 <= y1)" if bad else
            f"{b['far_outside_share']:.0%} reaching more than half an image beyond the border")
    return [Finding(
        id="output.boxes-invalid", severity="error" if bad else "warning",
        title=f"The model returns boxes that are not boxes: {what}",
        evidence={**b, "threshold": stats.threshold, **({"step": stats.step} if stats.step is not None else {})},
        cause="The decoding of the box outputs is wrong: corners computed with a sign or index swapped, (cx, cy, w, h) "
              "returned where (x1, y1, x2, y2) is expected, or unbounded deltas decoded with exp() without a clamp.",
        fix="Return boxes as (x1, y1, x2, y2) pixels of the input image; decode with the same box coder used to encode "
            "the targets (torchvision.ops.box_convert for cxcywh), clamp log-size deltas, clip to the image.",
        where=stats.source)]


@check("evaluation", order=55, findings=[FindingDoc(
    "output.size-bias", "predicted boxes are systematically larger or smaller than the objects",
    "after training, the side ratio sqrt(area) of the detection that best overlaps each object to the object's",
    severity=f"error when the median ratio is beyond {SIZE_ERROR:.3f} or below {1 / SIZE_ERROR:.3f} (a box so scaled "
             f"cannot reach IoU 0.5 even where it is placed right); warning beyond {SIZE_WARNING} or below "
             f"{1 / SIZE_WARNING}")])
def check_size_bias(stats: OutputStats) -> list[Finding]:
    b = stats.boxes
    r = b.get("size_ratio_median")
    if r is None or b.get("matched_objects", 0) < 8:
        return []
    if 1 / SIZE_WARNING <= r <= SIZE_WARNING:
        return []
    severe = r < 1 / SIZE_ERROR or r > SIZE_ERROR
    return [Finding(
        id="output.size-bias", severity="error" if severe else "warning",
        title=f"The model's boxes are {r:.2f}x the objects' size (median over {b['matched_objects']} objects): "
              + ("too small" if r < 1 else "too large"),
        evidence={k: b[k] for k in ("matched_objects", "size_ratio_median", "size_ratio_quantiles_10_90") if k in b},
        cause="A systematic scale error between how the box targets are encoded and how the outputs are decoded "
              "(half-widths used as widths, a size scaled by the stride twice, priors of another frame).",
        fix="Decode the outputs with the inverse of the target encoding (one box coder for both), and check the "
            "decoded boxes of a training image against its ground truth.",
        where=stats.source)]


@check("monitor", "evaluation", order=56, findings=[FindingDoc(
    "output.location-blind", "the class scores do not vary with location: the classifier does not look at places",
    "after training, the spread of the scores of an image's best detections of one class (a classifier that pools "
    "away location gives the same score everywhere)", severity=f"error when the median spread is below "
    f"{CONSTANT_SCORES:g}")])
def check_location_blind_scores(stats: OutputStats) -> list[Finding]:
    spread = stats.boxes.get("score_spread_top_detections_median")
    if spread is None or spread >= CONSTANT_SCORES:
        return []
    return [Finding(
        id="output.location-blind", severity="error",
        title=f"Every place gets the same class score (spread {spread:.1g} among an image's best detections of a "
              "class): the scores do not depend on where in the image",
        evidence={k: stats.boxes[k] for k in ("score_spread_top_detections_median", "score_spread_groups", "detections")},
        cause="The classification branch pools the feature map (global average pooling, a flatten + linear over the "
              "image) and broadcasts one score to every cell, so it can say which classes the image holds but not "
              "where; every box of a class then gets the same score and NMS keeps arbitrary ones.",
        fix="Predict class scores per location with a convolution over the feature map (as the box branch does), "
            "not from a pooled vector.",
        where=stats.source)]
