"""Evaluation checks: the evaluated sample size (with a confidence interval) and the train-vs-validation gap."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from scipy.stats import t as student_t

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.findings import Finding

VAL_RISE = 0.10  # validation loss 10 % above its minimum while training loss keeps falling: overfitting


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % Student-t quantile."""
    return float(student_t.ppf(0.975, df))


def mean_confidence_interval(mean: float, std: float, n: int, population: int | None = None) -> tuple[float, float]:
    """95 % CI of a mean from n of `population` items (finite-population correction when given)."""
    if n < 2:
        return (float("-inf"), float("inf"))
    half = t_quantile_975(n - 1) * std * math.sqrt(n / (n - 1)) / math.sqrt(n)  # std given as population std
    if population and population > 1 and n < population:
        half *= math.sqrt((population - n) / (population - 1))
    elif population and n >= population:
        half = 0.0
    return (mean - half, mean + half)


@check("evaluation", "run", order=10, findings=[FindingDoc(
    "eval.sample-bias", "a metric is taken on a small subset and reported as the dataset figure",
    "evaluated against total images of the split (metrics.json subset / num_images / total_images), with the 95 % "
    "confidence interval of the per-image mean when a per-image distribution exists",
    needs="nothing from the model (the metrics file)", severity="warning")])
def check_sample_size(metrics: Mapping[str, Any], metric: str | None = None) -> list[Finding]:
    """eval.sample-bias: the metrics were computed on a subset of the split (metrics.json keys `subset`,
    `num_images`/`total_images`, and for segmentation `per_image_miou` {mean, std, n})."""
    subset = metrics.get("subset") or {}
    n = int(subset.get("evaluated_images") or metrics.get("num_images") or 0)
    total = int(subset.get("total_images") or metrics.get("total_images") or n)
    if n <= 0 or n >= total:
        return []
    metric = metric or ("miou" if "miou" in metrics else "map")
    value = metrics.get(metric)
    evidence: dict[str, Any] = {"metric": metric, "value": value, "evaluated_images": n, "total_images": total,
                                "fraction": round(n / total, 4)}
    dist = metrics.get("per_image_miou") or {}
    ci = None
    if dist.get("n") and dist.get("std") is not None:
        lo, hi = mean_confidence_interval(float(dist["mean"]), float(dist["std"]), int(dist["n"]), total)
        ci = (max(0.0, lo), min(1.0, hi))
        evidence.update({"per_image_mean": round(dist["mean"], 4), "per_image_std": round(dist["std"], 4),
                         "ci95_of_per_image_mean": [round(ci[0], 4), round(ci[1], 4)]})
    shown = f"{value:.3f}" if isinstance(value, (int, float)) else "the metric"
    return [Finding(
        id="eval.sample-bias", severity="warning",
        title=f"{metric} {shown} comes from {n} of {total} images ({n / total:.0%}); it is not the dataset figure"
              + (f" (95% CI of the per-image mean {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""),
        evidence=evidence,
        cause="A small subset has a wide confidence interval, and a subset picked by hand or at a fixed stride can be "
              "biased beyond it (the seed: 38.8% mIoU on 10 images vs 31-33% on the full split).",
        fix="Report the metric on the whole split (eval.max_images=0); if a subset is unavoidable, sample it at random, "
            "say so next to the number, and give its confidence interval.",
        where=metric)]


NOISE_MULTIPLE = 3.0  # a rise within 3 standard deviations of one evaluation's noise is not a rise
MAX_CURVE_POINTS = 50


def _epoch_means(series: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """One value per epoch (the mean of the rows logged during it: training rows come every few steps)."""
    sums: dict[int, list[float]] = {}
    for epoch, v in series:
        sums.setdefault(epoch, []).append(v)
    return [(e, sum(vs) / len(vs)) for e, vs in sums.items()]


def _thin(values: list[float]) -> list[float]:
    """At most MAX_CURVE_POINTS evenly spaced values (the evidence stays readable on long runs)."""
    if len(values) <= MAX_CURVE_POINTS:
        return values
    step = len(values) / MAX_CURVE_POINTS
    return [values[int(i * step)] for i in range(MAX_CURVE_POINTS)] + [values[-1]]


def _series(history: Sequence[Mapping[str, Any]], split: str, key: str) -> list[tuple[int, float]]:
    out = []
    for row in history:
        if row.get("split") == split and isinstance(row.get(key), (int, float)) and math.isfinite(row[key]):
            out.append((int(row.get("epoch", len(out))), float(row[key])))
    return out


@check("evaluation", "run", order=20, findings=[FindingDoc(
    "fit.generalization-gap", "validation loss/metric far from training",
    "training and validation loss per epoch: validation rising >= 10 % above its minimum while training falls",
    needs="nothing from the model (the history)",
    severity="warning when validation got worse while training improved; info for a gap that is still closing")])
def check_generalization_gap(history: Sequence[Mapping[str, Any]], loss_key: str = "loss",
                             metric_key: str | None = None) -> list[Finding]:
    """fit.generalization-gap from the history rows (split "train"/"val", epoch, loss, metrics), as the Trainer
    writes them. A gap alone is not overfitting: what matters is whether validation got worse while training
    got better."""
    train, val = _epoch_means(_series(history, "train", loss_key)), _epoch_means(_series(history, "val", loss_key))
    if len(val) < 3 or len(train) < 2:
        return []
    best_epoch, best = min(val, key=lambda x: x[1])
    last_epoch, last = val[-1]
    train_at = dict(train)
    train_best = train_at.get(best_epoch)
    train_last = train[-1][1]
    evidence: dict[str, Any] = {"val_loss_min": round(best, 5), "val_loss_min_epoch": best_epoch, "val_loss_last": round(last, 5),
                                "train_loss_last": round(train_last, 5), "epochs": last_epoch,
                                "val_loss_curve": _thin([round(v, 4) for _, v in val]),
                                "train_loss_curve": _thin([round(v, 4) for _, v in train])}
    if metric_key:
        m = _series(history, "val", metric_key)
        if m:
            evidence[f"val_{metric_key}_curve"] = _thin([round(v, 4) for _, v in m])
    # "got worse" must hold for the recent evaluations together and exceed the curve's step-to-step noise
    values = [v for _, v in val]
    recent = sorted(values[-max(3, len(values) // 4):])[len(values[-max(3, len(values) // 4):]) // 2]
    # noise of one evaluation, from second differences (a trend cancels out): median |d2| = 0.674 * sqrt(6) sigma.
    # The one centred on the minimum is left out: there the curve turns by hypothesis, which is not noise.
    turn = values.index(best)
    second = sorted(abs(values[i - 1] - 2 * values[i] + values[i + 1]) for i in range(1, len(values) - 1) if i != turn)
    noise = second[len(second) // 2] / 1.65 if second else 0.0
    evidence.update({"val_loss_recent_median": round(recent, 5), "val_loss_step_noise": round(noise, 5)})
    rose = (recent > best * (1 + VAL_RISE) and recent - best > NOISE_MULTIPLE * noise and best_epoch < last_epoch)
    train_fell = train_best is None or train_last < train_best
    if rose and train_fell:
        return [Finding(
            id="fit.generalization-gap", severity="warning",
            title=f"Overfitting: validation loss rose {recent / best - 1:.0%} from its minimum at epoch {best_epoch} "
                  f"while training loss kept falling (to {train_last:.3g})",
            evidence=evidence,
            cause="After epoch " f"{best_epoch} the model memorises the training images: the training loss still falls, "
                  "the validation loss climbs.",
            fix=f"Keep the checkpoint of epoch {best_epoch} (early stopping on the validation metric), add augmentation "
                "or weight decay, or get more training data.",
            where="validation")]
    if last > train_last * 1.5:
        return [Finding(
            id="fit.generalization-gap", severity="info",
            title=f"Validation loss ({last:.3g}) stays above training loss ({train_last:.3g}) but is still "
                  f"{'falling' if last <= best * 1.01 else 'flat'}: a gap, not overfitting",
            evidence=evidence,
            cause="Training loss is measured with augmentation and dropout on moving weights; validation on other "
                  "images. A constant gap is expected; only a rising validation loss is overfitting.",
            fix="Nothing yet; watch whether the validation loss turns upward.",
            where="validation")]
    return []
