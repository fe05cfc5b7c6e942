"""Score-IoU consistency of detections and the TIDE-style split of the missing AP, read from the
project's evaluation modules (visiondoctor.evaluation.consistency / .errors)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.checks.outputs import WARN_AFTER, steps_trained
from visiondoctor.doctor.findings import Finding
from visiondoctor.evaluation.consistency import score_iou_consistency

MIN_DETECTIONS = 20  # fewer high-score detections than this say nothing about a population
HIGH_SCORE_LOW_IOU_ERROR = 0.5  # most confident detections are on nothing
HIGH_SCORE_LOW_IOU_WARNING = 0.25
SPEARMAN_WARNING = 0.2


@check("evaluation", "run", order=60, findings=[FindingDoc(
    "consistency.score-iou", "detection scores do not track box quality",
    "Spearman correlation of detection scores with their IoU to the best same-class box, and the share of confident "
    "detections (score >= 0.5) overlapping no object at IoU 0.3", needs="the contract only",
    severity="error when >= 50 % of confident detections hit nothing after 500 training steps (a warning before: "
             "scores may still settle); warning at >= 25 % or Spearman < 0.2")])
def score_iou_findings(consistency: dict[str, Any], history: Sequence[Mapping[str, Any]] | None = None) -> list[Finding]:
    """consistency.score-iou from a `score_iou_consistency` result (as in consistency.json). Like the other output
    symptoms (output.background-collapse), it is an error only once the run trained WARN_AFTER steps."""
    n = int(consistency.get("n") or 0)
    bad = consistency.get("high_score_low_iou", {})
    share = float(bad.get("share_of_high_score") or 0.0)
    count = int(bad.get("count") or 0)
    high = round(count / share) if share > 0 else 0
    rho = consistency.get("spearman")
    if n < MIN_DETECTIONS:
        return []
    evidence = {"detections": n, "spearman_score_vs_iou": None if rho is None else round(rho, 3),
                "mean_iou": None if consistency.get("mean_iou") is None else round(consistency["mean_iou"], 3),
                "high_score_low_iou": count, "share_of_high_score": round(share, 3),
                "score_threshold": bad.get("score_threshold"), "iou_threshold": bad.get("iou_threshold"),
                "mean_iou_by_score_bin": consistency.get("mean_iou_by_score_bin", {}).get("mean_iou")}
    steps = steps_trained(history)
    early = steps is not None and steps < WARN_AFTER
    evidence["trained_steps"] = steps
    if count >= 10 and share >= HIGH_SCORE_LOW_IOU_ERROR:
        severity = "warning" if early else "error"
    elif (count >= 10 and share >= HIGH_SCORE_LOW_IOU_WARNING) or (rho is not None and rho < SPEARMAN_WARNING and high >= 10):
        severity = "warning"
    else:
        return []
    return [Finding(
        id="consistency.score-iou", severity=severity,
        title=(f"{share:.0%} of the confident detections (score >= {bad.get('score_threshold')}) overlap no object "
               f"(IoU < {bad.get('iou_threshold')}): a high score does not mean a good box (Spearman score-IoU "
               f"{'n/a' if rho is None else f'{rho:.2f}'})" + (f" after only {steps} training steps" if early else "")),
        evidence=evidence,
        cause="Scores do not rank boxes by quality: locations that were never supervised at training (e.g. box and "
              "confidence losses only at positive locations) emit confident boxes at inference, or inference decodes "
              "scores/boxes differently from training.",
        fix="Supervise the confidence at every location (negatives pushed to 0, e.g. focal loss over all locations) "
            "so only trained positions score high; check that inference uses the same pre-processing, box decoding "
            "and score activation as training.",
        where="detections")]


def check_score_iou(gt: dict, predictions: list[dict], min_score: float = 0.05) -> list[Finding]:
    """consistency.score-iou on COCO ground truth and results."""
    return score_iou_findings(score_iou_consistency(gt, predictions, min_score))


@check("evaluation", "run", order=70, findings=[FindingDoc(
    "eval.error-breakdown", "which error type (TIDE-style) costs the most AP",
    "AP50 gained by fixing each error type (classification, localisation, both, duplicate, background, missed)",
    needs="the contract only", severity="info")])
def error_breakdown_findings(tide: dict[str, Any]) -> list[Finding]:
    """eval.error-breakdown: which error type costs the most AP50 (TIDE-style), as an info finding."""
    dap = {k: v for k, v in (tide.get("dap") or {}).items() if v is not None}
    if not dap or tide.get("map50") is None:
        return []
    worst = max(dap, key=dap.get)
    if dap[worst] <= 0:
        return []
    hints = {"classification": "objects found in the right place with the wrong class: more examples of the confused classes",
             "localisation": "right class, box off: anchor/box-regression quality, higher input resolution",
             "both": "wrong class and box off", "duplicate": "several boxes per object: NMS threshold",
             "background": "confident boxes on background: hard negatives, score calibration",
             "missed": "objects never detected: anchors/strides for small objects, recall"}
    return [Finding(
        id="eval.error-breakdown", severity="info",
        title=f"Most AP50 is lost to {worst} errors (+{dap[worst]:.3f} AP50 if fixed; AP50 now {tide['map50']:.3f})",
        evidence={"map50": round(tide["map50"], 4), "dap": {k: round(v, 4) for k, v in dap.items()},
                  "counts": tide.get("counts", {}), "oracle": tide.get("oracle", {})},
        cause=hints.get(worst, ""),
        fix="Work on the largest error type first; the ΔAP of each type is measured with the others left as they are.",
        where="evaluation")]
