"""Anomaly scores and metrics against direct computations written here by sorting (no sklearn)."""
from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from visiondoctor.evaluation.anomaly import (
    AnomalyEvaluator,
    Counts,
    SMLStats,
    SMLStatsAccumulator,
    boundary_suppression,
    dilated_smoothing,
    energy_score,
    maxlogit_score,
    metrics_from_counts,
    msp_score,
    order_keys,
    sml_score,
)

ANOMALY, IGNORE = 13, 255


def reference(scores: list[float], positive: list[bool]) -> dict[str, float]:
    """AUROC by pairwise comparison (ties half), AP and FPR95 by walking the sorted thresholds."""
    pos = [s for s, y in zip(scores, positive) if y]
    neg = [s for s, y in zip(scores, positive) if not y]
    auroc = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))
    ranked = sorted(zip(scores, positive), key=lambda t: -t[0])
    tp = fp = 0
    ap, prev_tp, fpr95 = 0.0, 0, math.inf
    for _, group in itertools.groupby(ranked, key=lambda t: t[0]):
        for _, y in group:
            tp, fp = tp + y, fp + (not y)
        ap += (tp - prev_tp) / len(pos) * tp / (tp + fp)
        prev_tp = tp
        if tp / len(pos) >= 0.95:
            fpr95 = min(fpr95, fp / len(neg))
    return {"auroc": auroc, "aupr": ap, "fpr95": fpr95}


def _images():
    """Three tiny hand-made images: scores with ties, anomaly pixels, ignored pixels."""
    s1 = torch.tensor([[0.5, 0.5, 2.0, 3.0], [0.25, 1.0, 2.0, 0.5], [3.0, 0.75, 1.0, 1.0]])
    t1 = torch.tensor([[0, 1, 13, 13], [2, 2, 0, 0], [13, 1, 255, 3]])
    s2 = torch.tensor([[1.0, 1.0, 1.5, -0.5], [2.5, 0.0, 0.0, 1.0]])
    t2 = torch.tensor([[13, 0, 13, 1], [0, 255, 4, 13]])
    s3 = torch.tensor([[0.5, 4.0], [1.0, 2.0]])  # no anomaly pixel: skipped per image, counted pooled
    t3 = torch.tensor([[1, 2], [255, 0]])
    return [(s1, t1), (s2, t2), (s3, t3)]


def _flat(s, t):
    keep = t != IGNORE
    return s[keep].tolist(), (t[keep] == ANOMALY).tolist()


@pytest.mark.parametrize("bits", [16, 23])
def test_both_aggregations_match_direct_computation(bits: int) -> None:
    ev = AnomalyEvaluator(["a"], [ANOMALY], IGNORE, mantissa_bits=bits)
    for s, t in _images():
        ev.update({"a": s}, t)
    out = ev.result()
    m = out["methods"]["a"]
    all_s, all_y = [], []
    per = []
    for s, t in _images():
        fs, fy = _flat(s, t)
        all_s += fs
        all_y += fy
        if any(fy) and not all(fy):
            per.append(reference(fs, fy))
    pooled = reference(all_s, all_y)
    for k in ("auroc", "aupr", "fpr95"):
        assert m["pooled"][k] == pytest.approx(pooled[k], abs=1e-6)
        assert m["per_image"][k]["mean"] == pytest.approx(sum(r[k] for r in per) / len(per), abs=1e-6)
    assert m["per_image"]["images_used"] == 2 and m["per_image"]["images_skipped"] == 1
    assert m["pooled"]["positives"] == sum(all_y) and m["pooled"]["negatives"] == len(all_y) - sum(all_y)
    assert out["images_without_anomaly"] == 1
    assert "ignore index 255 are excluded" in out["convention"]
    # the numbers are not trivial: a bad implementation could not hit them by accident
    assert 0.5 < pooled["auroc"] < 1 and 0 < pooled["fpr95"] < 1


def test_exact_keys_match_reference_on_random_scores() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3000, generator=g)
    y = torch.rand(3000, generator=g) < 0.07
    s[y] += 1.2
    s[::7] = s[::7].round()  # plenty of ties
    got = metrics_from_counts(Counts.from_keys(order_keys(s), y))
    want = reference(s.tolist(), y.tolist())
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9)


def test_perfect_and_inverted_rankings() -> None:
    y = torch.tensor([True, True, False, False, False])
    good = metrics_from_counts(Counts.from_keys(order_keys(torch.tensor([5.0, 4, 1, 2, 3])), y))
    assert good == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    bad = metrics_from_counts(Counts.from_keys(order_keys(torch.tensor([-5.0, -4, 1, 2, 3])), y))
    assert bad["auroc"] == 0.0 and bad["fpr95"] == 1.0


def test_scores_follow_their_definitions() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 5, 6, 7, generator=g) * 3
    msp = torch.softmax(z.double(), 1).amax(1)
    assert torch.allclose(msp_score(z).double(), -msp.log(), atol=1e-5)
    assert torch.equal(maxlogit_score(z), -z.amax(1))
    assert torch.allclose(energy_score(z), -torch.logsumexp(z, 1))
    stats = SMLStats(mean=[1.0, 2.0, 0.5, -1.0, 3.0], std=[1.0, 0.5, 2.0, 1.0, 4.0], count=[1] * 5)
    m, c = z.max(1)
    want = -(m - torch.tensor(stats.mean)[c]) / torch.tensor(stats.std)[c]
    assert torch.allclose(sml_score(z, stats, suppress_boundaries=False, smooth=False), want)


def test_sml_statistics_grouped_by_predicted_class() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, 8, 8, generator=g)
    acc = SMLStatsAccumulator(4)
    acc.update(z[:2])
    acc.update(z[2:])
    stats = acc.finalize()
    m, c = z.max(1)
    for k in range(4):
        vals = m[c == k].double()
        assert stats.count[k] == vals.numel()
        assert stats.mean[k] == pytest.approx(float(vals.mean()), abs=1e-9)
        assert stats.std[k] == pytest.approx(float(vals.std(unbiased=False)), abs=1e-9)


def test_boundary_suppression_and_smoothing() -> None:
    pred = torch.zeros(1, 12, 12, dtype=torch.long)
    pred[:, :, 6:] = 1
    score = torch.zeros(1, 12, 12)
    score[:, :, 5:7] = 10.0  # a spike along the predicted boundary
    out = boundary_suppression(score, pred, width=4, iterations=4)
    assert out[:, :, 5:7].abs().max() < 1e-6  # replaced from the non-boundary interior
    flat = torch.full((1, 12, 12), 2.5)
    assert torch.allclose(boundary_suppression(flat, pred), flat)
    assert torch.allclose(boundary_suppression(score, torch.zeros_like(pred)), score)  # no boundary: untouched
    assert torch.allclose(dilated_smoothing(flat), flat)
    spike = torch.zeros(1, 40, 40)
    spike[0, 20, 20] = 1.0
    sm = dilated_smoothing(spike)
    assert sm.sum() == pytest.approx(1.0, abs=1e-5) and sm.max() < 0.2
    assert sm[0, 20, 26] > 0 and sm[0, 20, 23] == 0  # dilation 6: taps every 6 px


def test_nan_scores_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        order_keys(torch.tensor([0.0, float("nan")]))


def test_memory_bound_500_images_512px() -> None:
    """Peak RSS of the pooled + per-image accumulation over many 512x512 score maps stays small.
    Measured in a fresh process with resource.getrusage; the benchmark runs the full 500 images."""
    code = textwrap.dedent("""
        import resource, torch
        torch.set_num_threads(1)
        from visiondoctor.evaluation.anomaly import AnomalyEvaluator
        ev = AnomalyEvaluator(["msp", "sml"], [13], 255)
        g = torch.Generator().manual_seed(0)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for i in range(12):
            t = torch.randint(0, 14, (512, 512), generator=g)
            s = torch.randn(512, 512, generator=g) + (t == 13) * 1.0
            ev.update({"msp": s, "sml": s * 2}, t)
        r = ev.result()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base, r["methods"]["msp"]["pooled"]["auroc"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""}).stdout.split()
    peak_kb, base_kb, auroc = int(out[0]), int(out[1]), float(out[2])
    assert peak_kb < 2 * 1024 * 1024
    assert peak_kb - base_kb < 600 * 1024  # growth while streaming 3M pixels x 2 methods
    assert 0.6 < auroc < 0.8  # shift of 1 sigma: AUROC = Phi(1/sqrt 2) = 0.76
