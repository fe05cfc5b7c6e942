"""The configured learning rate placed on a measured range (visiondoctor.doctor.lr_range): a step size
that makes the loss blow up, or one orders of magnitude below where the loss falls fastest."""
from __future__ import annotations

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.lr_range import RangeTest
from visiondoctor.findings import Finding

TOO_LOW_WARNING = 100.0  # configured lr this many times below the steepest-descent one: training barely moves
TOO_LOW_ERROR = 1000.0
NEAR_DIVERGENCE = 0.5  # within a factor 2 of the learning rate that blew the loss up


@check("probe", order=95, findings=[
    FindingDoc("optimizer.lr-too-high", "the learning rate is in the range where the loss diverges",
               "a learning-rate range test with the run's own optimizer on one batch: the learning rate from which the "
               "loss blows up or turns non-finite, against the configured one",
               severity="error when the configured lr is at or above it; warning within a factor 2 below it"),
    FindingDoc("optimizer.lr-too-low", "the learning rate is orders of magnitude below the range where the loss falls",
               "the same range test: the learning rate where the loss falls fastest, against the configured one",
               severity=f"warning when the configured lr is {TOO_LOW_WARNING:g}x below it, error at {TOO_LOW_ERROR:g}x")])
def check_learning_rate(lr_range: RangeTest) -> list[Finding]:
    lr, diverges, steep = lr_range.configured, lr_range.diverged_at, lr_range.steepest
    evidence = lr_range.to_evidence()
    if diverges is not None and lr >= NEAR_DIVERGENCE * diverges:
        above = lr >= diverges
        return [Finding(
            id="optimizer.lr-too-high", severity="error" if above else "warning",
            title=f"The learning rate {lr:g} is {'in' if above else 'next to'} the range where the loss diverges "
                  f"(measured: it blows up from {diverges:.2g}" + (f"; it falls fastest near {steep:.2g}" if steep else "") + ")",
            evidence=evidence,
            cause="Each step overshoots: the loss grows instead of falling, gradients explode and the weights end in "
                  "NaN (the symptoms loss.nonfinite / grad.exploding / train.not-learning follow from this).",
            fix=f"Set train.lr near the measured steepest-descent value ({steep:.2g})" if steep else
                "Lower train.lr by at least 10x" + " (and keep warm-up and gradient clipping on).",
            where="optimizer")]
    if steep is not None and lr * TOO_LOW_WARNING < steep:
        return [Finding(
            id="optimizer.lr-too-low", severity="error" if lr * TOO_LOW_ERROR < steep else "warning",
            title=f"The learning rate {lr:g} is {steep / lr:.0f}x below where the loss falls fastest ({steep:.2g}): "
                  "training will barely move",
            evidence=evidence,
            cause="Each step changes the weights by a tiny fraction of what the loss allows; in any affordable number "
                  "of steps the model stays near its initialisation (train.not-learning follows from this).",
            fix=f"Set train.lr near {steep:.2g} (the measured steepest descent), with warm-up.",
            where="optimizer")]
    return []
