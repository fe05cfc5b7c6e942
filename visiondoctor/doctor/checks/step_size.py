"""The configured learning rate placed on a measured range (visiondoctor.doctor.lr_range): a step size
that makes the loss blow up, or one orders of magnitude below where the loss falls fastest."""
from __future__ import annotations

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.lr_range import RangeTest
from visiondoctor.findings import Finding

# Below the learning rate at which the range test's loss starts to fall: 10x (warning), 100x (error). The test
# raises the rate by a constant factor per step, so "at or above the divergence rate" is as fine as it can tell.
TOO_LOW_WARNING = 10.0
TOO_LOW_ERROR = 100.0


@check("probe", order=95, findings=[
    FindingDoc("optimizer.lr-too-high", "the learning rate is in the range where the loss diverges",
               "a learning-rate range test with the run's own optimizer on one batch (the rate raised geometrically "
               "each step): the learning rate from which the loss blows up or turns non-finite, against the configured one",
               severity="error when the configured lr is at or above it"),
    FindingDoc("optimizer.lr-too-low", "the learning rate is orders of magnitude below the range where the loss falls",
               "the same range test: the learning rate at which the loss starts to fall, against the configured one",
               severity=f"warning when the configured lr is {TOO_LOW_WARNING:g}x below it, error at {TOO_LOW_ERROR:g}x")])
def check_learning_rate(lr_range: RangeTest) -> list[Finding]:
    lr, diverges, steep, onset = lr_range.configured, lr_range.diverged_at, lr_range.steepest, lr_range.onset
    evidence = lr_range.to_evidence()
    if diverges is not None and lr >= diverges:
        return [Finding(
            id="optimizer.lr-too-high", severity="error",
            title=f"The learning rate {lr:g} is in the range where the loss diverges (measured: it blows up from "
                  f"{diverges:.2g}" + (f"; it falls fastest near {steep:.2g}" if steep else "") + ")",
            evidence=evidence,
            cause="Each step overshoots: the loss grows instead of falling, gradients explode and the weights end in "
                  "NaN (the symptoms loss.nonfinite / grad.exploding / train.not-learning follow from this).",
            fix=(f"Set train.lr near the measured steepest-descent value ({steep:.2g})" if steep else
                 "Lower train.lr by at least 10x") + " and keep warm-up and gradient clipping on.",
            where="optimizer")]
    if onset is not None and lr * TOO_LOW_WARNING <= onset:
        return [Finding(
            id="optimizer.lr-too-low", severity="error" if lr * TOO_LOW_ERROR <= onset else "warning",
            title=f"The learning rate {lr:g} is {onset / lr:.0f}x below where the loss starts to fall ({onset:.2g}): "
                  "training will barely move",
            evidence=evidence,
            cause="Each step changes the weights by a tiny fraction of what the loss allows; in any affordable number "
                  "of steps the model stays near its initialisation (train.not-learning follows from this).",
            fix=f"Set train.lr near {steep:.2g} (the measured steepest descent), with warm-up." if steep else
                f"Raise train.lr to at least {onset:.2g}.",
            where="optimizer")]
    return []
