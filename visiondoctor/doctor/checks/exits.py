"""Exit distribution of early-exit models: per-image exit indices and per-exit confidences."""
from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence

from visiondoctor.doctor.checks import FindingDoc, declare
from visiondoctor.doctor.findings import Finding

declare(FindingDoc(
    "early-exit.degenerate", "almost every image leaves at one exit / threshold below constant confidence",
    "per-image exit indices and per-exit confidences of an early-exit model against its thresholds",
    needs="an early-exit model (this project's exits)",
    severity="error when an exit's confidence is constant and its threshold lies below it; warning when >= 95 % "
             "of images leave at one exit", stage="early-exit calibration (eval --early-exit)"))

DOMINANT_EXIT = 0.95  # share of images at one exit above which the policy is not choosing anything
CONSTANT_SPREAD = 0.02  # max - min confidence of an exit over the images: a head that ignores its input


def check_exit_distribution(exit_indices: Sequence[int], exit_confidences: Sequence[Sequence[float]],
                            thresholds: Sequence[float], num_exits: int | None = None) -> list[Finding]:
    """early-exit.degenerate.

    exit_indices: the exit each image left at (0-based); exit_confidences[i][k]: image i's confidence at exit k
    (for the exits it reached, or all exits when forced); thresholds[k]: exit k's threshold (the last exit takes
    every remaining image)."""
    n = len(exit_indices)
    if n == 0:
        return []
    k_exits = num_exits or max(len(thresholds) + 1, max(exit_indices) + 1)
    counts = Counter(int(i) for i in exit_indices)
    distribution = [round(counts.get(k, 0) / n, 4) for k in range(k_exits)]
    top, top_count = counts.most_common(1)[0]
    findings = []
    for k, thr in enumerate(thresholds):
        conf = [float(c[k]) for c in exit_confidences if len(c) > k]
        if len(conf) < 2:
            continue
        lo, hi = min(conf), max(conf)
        if hi - lo < CONSTANT_SPREAD and thr <= lo and counts.get(k, 0) / n >= DOMINANT_EXIT:
            findings.append(Finding(
                id="early-exit.degenerate", severity="error",
                title=f"Every image leaves at exit {k + 1}: its confidence is constant ({lo:.3f}-{hi:.3f}) and the "
                      f"threshold {thr:g} is below it",
                evidence={"exit_distribution": distribution, "images": n, "exit": k + 1, "threshold": thr,
                          "confidence_range": [round(lo, 4), round(hi, 4)],
                          "confidence_std": round(statistics.pstdev(conf), 5)},
                cause="The exit head outputs the same confidence for every image (it learned nothing — e.g. a detector "
                      "collapsed to background), so the exit test passes for all images and later exits are never used.",
                fix="Fix the exit head's training first (see output.background-collapse); then calibrate each exit's "
                    "threshold on a validation split to an accuracy budget, not by hand.",
                where=f"exit {k + 1}"))
            return findings
    if k_exits >= 2 and top_count / n >= DOMINANT_EXIT:
        last = top == k_exits - 1
        findings.append(Finding(
            id="early-exit.degenerate", severity="warning",
            title=(f"{top_count / n:.0%} of images run the full model: the early exits are never taken"
                   if last else f"{top_count / n:.0%} of images leave at exit {top + 1}"),
            evidence={"exit_distribution": distribution, "images": n, "thresholds": list(thresholds),
                      "confidence_range_per_exit": [
                          [round(min(c[k] for c in exit_confidences if len(c) > k), 4),
                           round(max(c[k] for c in exit_confidences if len(c) > k), 4)]
                          if any(len(c) > k for c in exit_confidences) else None for k in range(len(thresholds))]},
            cause=("Thresholds above every confidence the early exits produce." if last else
                   "The threshold of this exit is below the confidence of nearly every image."),
            fix="Calibrate thresholds on the validation split to a budget (AP drop or latency), and check that the "
                "exit confidences vary with image difficulty.",
            where=f"exit {top + 1}"))
    return findings
