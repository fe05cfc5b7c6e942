"""Findings: what the doctor reports, and the catalogue of stable IDs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass
class Finding:
    """One diagnosis: root cause first, then evidence (numbers), then the fix."""

    id: str  # stable dotted ID from CATALOGUE
    severity: Severity
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    cause: str = ""
    fix: str = ""
    where: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Finding":
        return cls(**{k: d[k] for k in ("id", "severity", "title", "evidence", "cause", "fix", "where") if k in d})


# Documented, stable IDs. A new check adds its ID here (and to docs/doctor.md).
CATALOGUE: dict[str, str] = {
    "data.label-zero-background": "a real class uses label 0, which torchvision detectors reserve for background",
    "data.box-format": "boxes look like the wrong format (xywh vs xyxy, normalised vs pixels)",
    "data.box-out-of-image": "boxes extend outside the image",
    "data.empty-category": "a category has no annotations",
    "data.class-imbalance": "one class dominates the annotations",
    "data.tiny-boxes": "many boxes are smaller than the model's smallest anchor/stride can resolve",
    "anchors.coverage": "anchors cannot reach the ground-truth boxes (low best possible recall)",
    "anchors.stride-mismatch": "anchor base size or grid stride disagrees with the measured feature stride",
    "head.num-classes-mismatch": "a head's output size disagrees with the number of classes",
    "params.no-gradient": "trainable parameters receive no gradient",
    "bn.frozen-but-updating": "frozen modules whose BatchNorm statistics still update",
    "roi.scale-mismatch": "RoIAlign/RoIPool spatial_scale disagrees with the measured feature-to-image ratio",
    "amp.partial": "only part of the forward/loss ran under autocast",
    "head.class-specific-regression": "box regression outputs 4 numbers per class",
    "loss.nonfinite": "a loss component or gradient is NaN/inf",
    "loss.imbalance": "loss components differ by orders of magnitude",
    "grad.exploding": "gradient norm explodes",
    "grad.vanishing": "gradient norm vanishes",
    "train.not-learning": "loss does not decrease",
    "assignment.low-iou-positives": "positives are matched at low IoU (or at random)",
    "output.background-collapse": "the classifier predicts background everywhere",
    "regression.out-of-range": "box-regression outputs far outside the coder's range",
    "fit.overfit-one-batch": "the pipeline cannot overfit one small batch",
    "eval.sample-bias": "a metric is taken on a small subset and reported as the dataset figure",
    "fit.generalization-gap": "validation loss/metric far from training",
    "consistency.score-iou": "detection scores do not track box quality",
    "early-exit.degenerate": "almost every image leaves at one exit / threshold below constant confidence",
    "output.detections-per-image": "detections per image are implausible for the threshold",
    "eval.error-breakdown": "which error type (TIDE-style) costs the most AP",
    "optimizer.missing-params": "trainable parameters the optimizer does not hold (or a param group with lr 0)",
    "check.failed": "a check raised internally; it is reported instead of stopping the run",
}
