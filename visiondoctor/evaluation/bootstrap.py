"""When is a difference in mAP real? Bootstrap confidence intervals over the evaluation images.

    compare_predictions(gt, {"ours": preds_a, "theirs": preds_b}) -> BootstrapComparison
        .intervals["ours"]["map"] -> Interval(value, low, high)
        .difference("ours", "theirs", "map") -> Difference(value, low, high, significant)
    bootstrap_interval(gt, predictions) -> {metric: Interval}
    compare_scores({"a": image_scores(gt, preds_a), ...})    (per-image results evaluated once, reused)

Method (a percentile bootstrap over images, the unit the split was drawn in):
- The evaluated images are drawn with replacement, as many as there are, `RESAMPLES` = 1000
  times from numpy's `default_rng(SEED)` with SEED = 0; the same draws serve every model, so two
  models evaluated on the same images are compared on the same resamples (a *paired* bootstrap).
- Each resample's mAP is recomputed from faster-coco-eval's per-image results
  (`separate_eval=True`: one evaluation per class x area range x image, matching already done);
  only COCO's accumulation (ranking detections by score into precision/recall, 101-point AP)
  runs per resample, a few milliseconds for a few hundred images. An image drawn twice counts
  twice, with its detections and its ground truth. Without resampling the accumulation gives
  exactly `evaluate_detections`' figures (tests/test_bootstrap.py checks it).
- The 95 % interval is the 2.5th and 97.5th percentile of the resampled values (resamples in
  which no class has ground truth, so mAP is undefined, are left out and counted).
- Paired test: the difference of two models' metric on each resample; the difference is
  called significant when its 95 % interval excludes 0. This measures the noise of *this
  split's* images only: another seed of the same training, or other data, can move mAP more.
"""
from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import faster_coco_eval.faster_eval_api_cpp as fce_cpp
import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from visiondoctor.evaluation.coco import _prepare
from visiondoctor.evaluation.predictions import check_predictions

RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
DEFAULT_METRICS = ("map", "map50")
METRIC_LABELS = {"map": "mAP@[.5:.95]", "map50": "mAP@.5", "map75": "mAP@.75", "map_small": "mAP small",
                 "map_medium": "mAP medium", "map_large": "mAP large"}
# metric -> (COCO area range label, IoU-threshold index or None for the mean over 0.50:0.95)
METRICS: dict[str, tuple[str, int | None]] = {
    "map": ("all", None), "map50": ("all", 0), "map75": ("all", 5),
    "map_small": ("small", None), "map_medium": ("medium", None), "map_large": ("large", None)}


@dataclass(frozen=True)
class Interval:
    """A metric on the whole split and its bootstrap interval (None where undefined)."""

    value: float | None
    low: float | None
    high: float | None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    def __str__(self) -> str:
        return _fmt(self.value) + ("" if self.low is None else f" [{_fmt(self.low)}, {_fmt(self.high)}]")


@dataclass(frozen=True)
class Difference(Interval):
    """`a` minus `b` on the same images, with the paired bootstrap interval of the difference."""

    a: str = ""
    b: str = ""
    metric: str = "map"

    @property
    def significant(self) -> bool:
        """The interval of the difference excludes 0."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def oriented(self, a: str, b: str) -> Difference:
        """The same difference as `a` minus `b` (sign and interval flipped when stored the other way)."""
        if (self.a, self.b) == (a, b):
            return self
        if (self.a, self.b) != (b, a):
            raise ValueError(f"difference of {self.a} and {self.b}, not of {a} and {b}")
        return Difference(_negated(self.value), _negated(self.high), _negated(self.low), a, b, self.metric)

    def signed(self) -> str:
        """`+0.052 [+0.031, +0.074]`."""
        if self.value is None:
            return "n/a"
        bounds = "" if self.low is None else f" [{self.low:+.3f}, {self.high:+.3f}]"
        return f"{self.value:+.3f}{bounds}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def _negated(v: float | None) -> float | None:
    return None if v is None else -v


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


class ImageScores:
    """One model's COCO evaluation kept per image (faster-coco-eval's per-image results), so that
    any multiset of the images can be re-accumulated without matching again."""

    def __init__(self, gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]):
        image_ids = sorted(int(im["id"]) for im in gt["images"])
        check_predictions(list(predictions), set(image_ids), {c["id"] for c in gt["categories"]})
        if not image_ids or not gt["categories"]:
            raise ValueError("ground truth without images or categories: nothing to bootstrap")
        gt_copy, dets = _prepare(dict(gt), list(predictions), image_ids)
        quiet = logging.getLogger("faster_coco_eval").debug
        coco_gt = COCO(gt_copy, print_function=quiet)
        evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), "bbox", print_function=quiet, separate_eval=True)
        evaluator.evaluate()
        self.image_ids = tuple(int(i) for i in evaluator.params.imgIds)
        self.params = evaluator._paramsEval
        per_image = evaluator._evalImgs_cpp  # [class][area range][image], faster-coco-eval's own layout
        shape = (len(self.params.catIds), len(self.params.areaRng), len(self.image_ids))
        self.per_image = np.empty(len(per_image), dtype=object)
        self.per_image[:] = per_image
        self.per_image = self.per_image.reshape(shape)

    def metrics(self, images: np.ndarray | None = None, keys: Sequence[str] = DEFAULT_METRICS
                ) -> dict[str, float | None]:
        """`keys` on the images at the positions `images` (with repeats; None: every image once)."""
        images = np.arange(len(self.image_ids)) if images is None else np.asarray(images)
        labels = list(dict.fromkeys(METRICS[k][0] for k in keys))
        areas = [self.params.areaRngLbl.index(label) for label in labels]
        params = copy.copy(self.params)
        params.imgIds = list(range(len(images)))  # only the count matters to the accumulation
        params.areaRng = [self.params.areaRng[a] for a in areas]
        params.areaRngLbl = labels
        params.maxDets = [self.params.maxDets[-1]]  # 100 detections per image, as mAP is defined
        evaluations = self.per_image[:, areas][:, :, images].ravel().tolist()
        precision = np.asarray(fce_cpp.COCOevalAccumulate(params, evaluations)["precision"])  # [T, R, K, A, M]
        out: dict[str, float | None] = {}
        for key in keys:
            label, iou = METRICS[key]
            p = precision[:, :, :, labels.index(label), -1]
            p = p if iou is None else p[iou]
            out[key] = float(p[p > -1].mean()) if (p > -1).any() else None
        return out


def image_scores(gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> ImageScores:
    """Evaluate `predictions` against `gt` (a COCO dict) once, keeping the per-image results."""
    return ImageScores(gt, predictions)


def resample_indices(num_images: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, num_images] image positions drawn with replacement (the same for every model)."""
    return np.random.default_rng(seed).integers(0, num_images, size=(resamples, num_images))


def replicates(scores: ImageScores, draws: np.ndarray, keys: Sequence[str] = DEFAULT_METRICS) -> dict[str, np.ndarray]:
    """Each metric on every resample (NaN where undefined)."""
    values = [scores.metrics(d, keys) for d in draws]
    return {k: np.array([np.nan if v[k] is None else v[k] for v in values]) for k in keys}


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    finite = samples[np.isfinite(samples)]
    if len(finite) < max(2, len(samples) // 2):
        return None, None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def interval(value: float | None, samples: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    low, high = _percentiles(samples, confidence)
    return Interval(value, low, high)


def difference(name_a: str, name_b: str, metric: str, value_a: float | None, value_b: float | None,
               samples_a: np.ndarray, samples_b: np.ndarray, confidence: float = CONFIDENCE) -> Difference:
    """Paired bootstrap of a - b: the same resamples for both."""
    value = None if value_a is None or value_b is None else value_a - value_b
    low, high = _percentiles(samples_a - samples_b, confidence)
    return Difference(value, low, high, name_a, name_b, metric)


@dataclass(frozen=True)
class BootstrapComparison:
    """Intervals per model and paired differences per pair of models, on one set of images."""

    intervals: dict[str, dict[str, Interval]]  # model -> metric -> Interval
    differences: list[Difference]  # every pair, `a` the one with the higher value
    images: int
    resamples: int
    seed: int
    confidence: float

    def difference(self, a: str, b: str, metric: str = "map") -> Difference | None:
        """The difference between `a` and `b` (either order) on `metric`, as stored (higher first)."""
        return next((d for d in self.differences if d.metric == metric and {d.a, d.b} == {a, b}), None)

    def describe(self) -> str:
        return (f"{self.confidence * 100:g} % bootstrap intervals over the {self.images} evaluated images "
                f"({self.resamples} resamples, seed {self.seed}); a difference is significant when its paired "
                "interval excludes 0")

    def to_dict(self) -> dict[str, Any]:
        return {"intervals": {m: {k: v.to_dict() for k, v in iv.items()} for m, iv in self.intervals.items()},
                "differences": [d.to_dict() for d in self.differences], "images": self.images,
                "resamples": self.resamples, "seed": self.seed, "confidence": self.confidence}


def compare_scores(scores: Mapping[str, ImageScores], keys: Sequence[str] = DEFAULT_METRICS,
                   resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
                   ) -> BootstrapComparison:
    """Intervals for every model and paired differences for every pair; all models must have been
    evaluated on the same images (ValueError otherwise)."""
    ids = {s.image_ids for s in scores.values()}
    if len(ids) != 1:
        raise ValueError("paired bootstrap: the models were evaluated on different images")
    n = len(next(iter(ids)))
    draws = resample_indices(n, resamples, seed)
    values = {name: s.metrics(None, keys) for name, s in scores.items()}
    samples = {name: replicates(s, draws, keys) for name, s in scores.items()}
    intervals = {name: {k: interval(values[name][k], samples[name][k], confidence) for k in keys} for name in scores}
    differences = []
    for a, b in itertools.combinations(scores, 2):
        for k in keys:
            first, second = (a, b) if (values[a][k] or 0.0) >= (values[b][k] or 0.0) else (b, a)
            differences.append(difference(first, second, k, values[first][k], values[second][k],
                                          samples[first][k], samples[second][k], confidence))
    return BootstrapComparison(intervals, differences, n, resamples, seed, confidence)


def compare_predictions(gt: Mapping[str, Any], predictions: Mapping[str, Sequence[Mapping[str, Any]]],
                        keys: Sequence[str] = DEFAULT_METRICS, resamples: int = RESAMPLES, seed: int = SEED,
                        confidence: float = CONFIDENCE) -> BootstrapComparison:
    """Several models' COCO results on one ground truth: intervals and paired differences."""
    return compare_scores({name: image_scores(gt, p) for name, p in predictions.items()}, keys, resamples, seed,
                          confidence)


def bootstrap_interval(gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]],
                       keys: Sequence[str] = DEFAULT_METRICS, resamples: int = RESAMPLES, seed: int = SEED,
                       confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """One model's metrics with their bootstrap intervals."""
    return compare_predictions(gt, {"model": predictions}, keys, resamples, seed, confidence).intervals["model"]


def side_by_side(comparison: BootstrapComparison, first: str, second: str,
                 keys: Sequence[str] = DEFAULT_METRICS) -> list[list[str]]:
    """Rows of a two-model table: metric, `first` [95 % interval], `second` [interval], the ratio
    second / first, and second - first with its paired interval, marked when significant."""
    rows = []
    for key in keys:
        a, b = comparison.intervals[first][key], comparison.intervals[second][key]
        diff = comparison.difference(first, second, key).oriented(second, first)
        ratio = f"{b.value / a.value:.2f}" if a.value and b.value is not None else "n/a"
        verdict = "significant" if diff.significant else "not significant"
        rows.append([METRIC_LABELS[key], str(a), str(b), ratio, f"{diff.signed()} {verdict}"])
    return rows
