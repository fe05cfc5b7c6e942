"""Loss-history checks: non-finite components, components out of balance, a loss that does not decrease."""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.findings import Finding

IMBALANCE_RATIO = 1000.0  # three orders of magnitude: torchvision's own components stay within ~100x once training
NOT_LEARNING_RATIO = 0.95  # the last window's median is at least 95 % of the first window's


NONFINITE = FindingDoc(
    "loss.nonfinite", "a loss component or gradient is NaN/inf",
    "every loss component and the gradient norm of every top-level module at every step (the first non-finite one)",
    needs="the contract only",
    severity="error; warning for fewer than 3 steps with non-finite gradients (a GradScaler skips those)")
NONFINITE_GRAD_STEPS_ERROR = 3  # a GradScaler skips an occasional fp16 overflow; repeated ones are a bug


@check("monitor", order=10, findings=[NONFINITE])
def nonfinite_findings(nonfinite: Sequence[Finding], nonfinite_grad_steps: int = 0) -> list[Finding]:
    """loss.nonfinite as the monitor recorded it: an occasional non-finite gradient is a warning (a GradScaler
    skips such steps); a non-finite loss component, or repeated non-finite gradients, an error."""
    occasional = nonfinite_grad_steps < NONFINITE_GRAD_STEPS_ERROR
    return [Finding(**{**f.to_dict(), "severity": "warning"}) if occasional and f.evidence.get("kind") != "loss component"
            else f for f in nonfinite]


def nonfinite_finding(what: str, step: int, value: float, kind: str = "loss component") -> Finding:
    return Finding(
        id="loss.nonfinite", severity="error",
        title=f"The {kind} '{what}' became {value} at step {step}",
        evidence={"what": what, "kind": kind, "step": step, "value": str(value)},
        cause=("A division by a zero count (e.g. no positives), log of zero, an exploding learning rate, or fp16 "
               "overflow; once NaN reaches the weights the model is lost."),
        fix=("Find the first step it happens (given here); clamp denominators (max(1, num_positives)), lower the "
             "learning rate or add warm-up, clip gradients, and use bf16 or a GradScaler with fp16."),
        where=what)


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


@check("monitor", order=20, findings=[FindingDoc(
    "loss.imbalance", "loss components differ by orders of magnitude",
    "the medians of the loss components over the last window of steps (>= 1000x apart)", needs="the contract only",
    severity="warning")])
def loss_balance_findings(loss_history: Mapping[str, Sequence[float]], window: int = 50) -> list[Finding]:
    """loss.imbalance: medians over the last `window` steps of each component differ by >= IMBALANCE_RATIO."""
    medians = {}
    for name, values in loss_history.items():
        tail = _finite(values[-window:])
        if tail:
            medians[name] = statistics.median(abs(v) for v in tail)
    positive = {k: v for k, v in medians.items() if v > 0}
    if len(positive) < 2:
        return []
    hi, lo = max(positive, key=positive.get), min(positive, key=positive.get)
    ratio = positive[hi] / positive[lo]
    if ratio < IMBALANCE_RATIO:
        return []
    return [Finding(
        id="loss.imbalance", severity="warning",
        title=f"'{hi}' is {ratio:.0f}x larger than '{lo}': the total loss is almost only '{hi}'",
        evidence={"median_last_steps": {k: round(v, 6) for k, v in medians.items()}, "window": window, "ratio": round(ratio, 1)},
        cause="Components are summed without weights; the small one hardly moves the shared weights, so the part of "
              "the model it supervises barely trains.",
        fix=f"Weight the components (train.loss_weights) so they are within about 10x of each other, or check that "
            f"'{lo}' is normalised the same way as '{hi}' (per positive, per image).",
        where=lo)]


@check("monitor", order=25, findings=[FindingDoc(
    "train.not-learning", "loss does not decrease",
    "the median total loss of the last window of steps against the first window (>= 95 %)", needs="the contract only",
    severity="warning")])
def not_learning_findings(total_history: Sequence[float], steps: Sequence[int], window: int = 50) -> list[Finding]:
    """train.not-learning: the median loss of the last window is not below that of the first window."""
    values = list(total_history)
    if len(values) < 2 * window:
        return []
    first, last = _finite(values[:window]), _finite(values[-window:])
    if not first or not last:
        return []
    m0, m1 = statistics.median(first), statistics.median(last)
    if m0 <= 0 or m1 < NOT_LEARNING_RATIO * m0:
        return []
    return [Finding(
        id="train.not-learning", severity="warning",
        title=f"The loss did not decrease over {len(values)} steps (median {m0:.4g} at the start, {m1:.4g} at the end)",
        evidence={"median_first_window": round(m0, 6), "median_last_window": round(m1, 6), "window": window,
                  "steps": [steps[0], steps[-1]] if steps else []},
        cause="The learning rate is too small or too large, the targets carry no learnable signal (wrong labels or "
              "assignment), or the parameters are not in the optimizer.",
        fix="Run the overfit-one-batch probe: if one batch cannot be fitted, the pipeline is broken; otherwise tune "
            "the learning rate (a range test) and check optimizer.param_groups covers the model.",
        where="loss")]
