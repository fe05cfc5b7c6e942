"""Pixel-level anomaly scores (MSP, MaxLogit, Energy, SML) and their metrics (AUROC, AUPR, FPR95).

Scores: every method returns an anomaly score per pixel, HIGHER = MORE ANOMALOUS.
  msp       -log(max softmax) = logsumexp(z) - max(z). Ranks pixels exactly as -MSP does, but
            stays distinct where float32 softmax saturates at 1.0 (confident pixels).
  maxlogit  -max(z)                                   (Hendrycks et al., 2022)
  energy    -T * logsumexp(z / T), T = 1              (Liu et al., 2020: free energy)
  sml       -(max(z) - mu_c) / sigma_c, c = argmax(z), with mu_c / sigma_c the mean and std of
            the max logit over training pixels predicted as c; then iterative boundary
            suppression and dilated smoothing (Jung et al., ICCV 2021).

Metrics, two aggregations found in the literature, both reported:
  per_image  computed on each image holding both anomalous and normal pixels, then averaged
             (hendrycks/anomaly-seg); images without one of the two are skipped and counted.
  pooled     every pixel of the split ranked together (the SML code's protocol).
Positives: pixels whose label is an anomaly label. Negatives: every other labelled pixel.
Pixels with the ignore index are left out of both (the convention is written into the output).
AUROC: area under the ROC with ties counted half (trapezoids). AUPR: average precision,
sum over thresholds of (R_n - R_{n-1}) * P_n (sklearn's definition, no interpolation).
FPR95: the lowest false-positive rate among thresholds whose TPR >= 0.95.

Every pixel counts, in bounded memory: scores become integer keys that order like the float32
values (their bit pattern, sign-corrected). Per image the keys are exact. Pooled, the keys
keep the top `mantissa_bits` of the mantissa (default 16: bins 2^-16 wide relative to the
value, finer than 10^5 uniform bins over any range, with no range to guess beforehand), and
counts per key are merged as images stream in; memory grows with the number of distinct
bins, never with the number of pixels. No well-kept library computes these curves in
bounded memory over streamed data (sklearn needs every score in memory), hence this code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

METHODS = ("msp", "maxlogit", "energy", "sml")
TPR_LEVEL = 0.95


# ----- scores ------------------------------------------------------------------------------------

def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): -log max softmax."""
    logits = logits.float()
    return torch.logsumexp(logits, 1) - logits.amax(1)


def maxlogit_score(logits: torch.Tensor) -> torch.Tensor:
    return -logits.float().amax(1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return -temperature * torch.logsumexp(logits.float() / temperature, 1)


@dataclass
class SMLStats:
    """Per-class mean and standard deviation of the max logit, grouped by predicted class."""

    mean: list[float]
    std: list[float]
    count: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "count": self.count}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SMLStats":
        return cls([float(x) for x in d["mean"]], [float(x) for x in d["std"]], [int(x) for x in d["count"]])


class SMLStatsAccumulator:
    """Streams logits of training images; float64 sums, so memory is O(classes)."""

    def __init__(self, num_classes: int):
        self.k = num_classes
        self.n = torch.zeros(num_classes, dtype=torch.float64)
        self.s = torch.zeros(num_classes, dtype=torch.float64)
        self.s2 = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, logits: torch.Tensor) -> None:
        m, pred = logits.detach().float().max(1)
        m, pred = m.reshape(-1).double().cpu(), pred.reshape(-1).cpu()
        self.n += torch.bincount(pred, minlength=self.k).double()
        self.s += torch.bincount(pred, weights=m, minlength=self.k)
        self.s2 += torch.bincount(pred, weights=m * m, minlength=self.k)

    def finalize(self) -> SMLStats:
        """Classes never predicted on the training data fall back to the statistics of all pixels."""
        total = self.n.sum()
        if total == 0:
            raise ValueError("SML statistics: no training pixel was seen")
        g_mean = self.s.sum() / total
        g_std = ((self.s2.sum() / total - g_mean ** 2).clamp(min=0)).sqrt()
        mean = torch.where(self.n > 0, self.s / self.n.clamp(min=1), g_mean)
        var = torch.where(self.n > 1, self.s2 / self.n.clamp(min=1) - mean ** 2, g_std ** 2)
        std = var.clamp(min=0).sqrt().clamp(min=1e-6)
        return SMLStats(mean.tolist(), std.tolist(), [int(x) for x in self.n.tolist()])


def _boundaries(pred: torch.Tensor) -> torch.Tensor:
    """(N, H, W) labels -> (N, 1, H, W) bool: pixels whose 3x3 neighbourhood holds another class."""
    p = F.pad(pred[:, None].float(), (1, 1, 1, 1), mode="replicate")
    return F.max_pool2d(p, 3, 1) != -F.max_pool2d(-p, 3, 1)


def _dilate_l1(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a (N, 1, H, W) bool mask by an L1 (diamond) radius."""
    if radius <= 0:
        return mask
    r = torch.arange(-radius, radius + 1, device=mask.device)
    kernel = ((r[:, None].abs() + r[None, :].abs()) <= radius).float()[None, None]
    return F.conv2d(mask.float(), kernel, padding=radius) > 0


def boundary_suppression(score: torch.Tensor, pred: torch.Tensor, width: int = 4, iterations: int = 4) -> torch.Tensor:
    """Replace scores near predicted class boundaries, outside-in, by the mean of their non-boundary
    3x3 neighbours (Jung et al.): the boundary band starts `width` px wide and narrows each
    iteration, so values propagate inward from confident regions."""
    if iterations <= 0 or width <= 0:
        return score
    if width % iterations:
        raise ValueError(f"boundary width {width} must be a multiple of the iterations {iterations}")
    x = score[:, None].float()
    edges = _boundaries(pred)
    ones = torch.ones(1, 1, 3, 3, device=x.device)
    step = width // iterations
    for i in range(iterations):
        radius = 0 if i == iterations - 1 else width - step * i - 1
        keep = (~_dilate_l1(edges, radius)).float()
        total = F.conv2d(F.pad(x * keep, (1, 1, 1, 1), mode="replicate"), ones)
        count = F.conv2d(F.pad(keep, (1, 1, 1, 1), mode="replicate"), ones)
        averaged = torch.where(count > 0, total / count.clamp(min=1), x)
        x = torch.where(keep > 0, x, averaged)
    return x[:, 0]


def dilated_smoothing(score: torch.Tensor, kernel_size: int = 7, dilation: int = 6, sigma: float = 1.0) -> torch.Tensor:
    """A normalised Gaussian kernel applied with dilation (replicate padding keeps the size)."""
    r = torch.arange(kernel_size, device=score.device, dtype=torch.float32) - (kernel_size - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    g = (g / g.sum())[None, None]
    pad = dilation * (kernel_size - 1) // 2
    x = F.pad(score[:, None].float(), (pad, pad, pad, pad), mode="replicate")
    return F.conv2d(x, g, dilation=dilation)[:, 0]


def sml_score(logits: torch.Tensor, stats: SMLStats, suppress_boundaries: bool = True, smooth: bool = True,
              boundary_width: int = 4, boundary_iterations: int = 4, kernel_size: int = 7,
              dilation: int = 6) -> torch.Tensor:
    m, pred = logits.float().max(1)
    mean = torch.tensor(stats.mean, device=m.device)
    std = torch.tensor(stats.std, device=m.device)
    score = -(m - mean[pred]) / std[pred]
    if suppress_boundaries:
        score = boundary_suppression(score, pred, boundary_width, boundary_iterations)
    if smooth:
        score = dilated_smoothing(score, kernel_size, dilation)
    return score


def anomaly_scores(logits: torch.Tensor, methods: Sequence[str], sml_stats: SMLStats | None = None) -> dict[str, torch.Tensor]:
    """{method: (N, H, W) score}, higher = more anomalous."""
    out = {}
    for method in methods:
        if method == "msp":
            out[method] = msp_score(logits)
        elif method == "maxlogit":
            out[method] = maxlogit_score(logits)
        elif method == "energy":
            out[method] = energy_score(logits)
        elif method == "sml":
            if sml_stats is None:
                raise ValueError("sml needs per-class statistics from the training split")
            out[method] = sml_score(logits, sml_stats)
        else:
            raise ValueError(f"unknown anomaly method {method!r}; known: {', '.join(METHODS)}")
    return out


# ----- metrics -----------------------------------------------------------------------------------

def order_keys(scores: torch.Tensor) -> torch.Tensor:
    """int64 keys that sort exactly like the float32 scores (-0.0 and 0.0 share a key)."""
    s = scores.detach().reshape(-1).to("cpu", torch.float32)
    if torch.isnan(s).any():
        raise ValueError(f"{int(torch.isnan(s).sum())} anomaly scores are NaN")
    bits = s.view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits, -(bits & 0x7FFFFFFF))


def key_to_float(keys: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """The float32 value at the lower edge of each key's bin."""
    k = keys.to(torch.int64) << shift
    bits = torch.where(k >= 0, k, (-k) | 0x80000000)  # sign bit back on for negative values
    bits = torch.where(bits >= 2 ** 31, bits - 2 ** 32, bits)  # same 32-bit pattern, in int32 range
    return bits.to(torch.int32).view(torch.float32)


@dataclass
class Counts:
    """Positive / negative pixel counts per score key, keys ascending."""

    keys: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor

    @classmethod
    def empty(cls) -> "Counts":
        z = torch.zeros(0, dtype=torch.int64)
        return cls(z, z.clone(), z.clone())

    @classmethod
    def from_keys(cls, keys: torch.Tensor, positive: torch.Tensor) -> "Counts":
        uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        pos = torch.bincount(inverse, weights=positive.double(), minlength=len(uniq)).to(torch.int64)
        total = torch.bincount(inverse, minlength=len(uniq))
        return cls(uniq, pos, total - pos)

    def coarsen(self, shift: int) -> "Counts":
        """Merge keys into bins 2^shift wide (keys stay sorted, so neighbours merge)."""
        if shift == 0 or len(self.keys) == 0:
            return self
        binned = self.keys >> shift
        uniq, inverse = torch.unique_consecutive(binned, return_inverse=True)
        pos = torch.zeros(len(uniq), dtype=torch.int64).index_add_(0, inverse, self.pos)
        neg = torch.zeros(len(uniq), dtype=torch.int64).index_add_(0, inverse, self.neg)
        return Counts(uniq, pos, neg)

    @staticmethod
    def merge(parts: Sequence["Counts"]) -> "Counts":
        parts = [p for p in parts if len(p.keys)]
        if not parts:
            return Counts.empty()
        if len(parts) == 1:
            return parts[0]
        keys = torch.cat([p.keys for p in parts])
        uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        pos = torch.zeros(len(uniq), dtype=torch.int64).index_add_(0, inverse, torch.cat([p.pos for p in parts]))
        neg = torch.zeros(len(uniq), dtype=torch.int64).index_add_(0, inverse, torch.cat([p.neg for p in parts]))
        return Counts(uniq, pos, neg)

    @property
    def num_pos(self) -> int:
        return int(self.pos.sum())

    @property
    def num_neg(self) -> int:
        return int(self.neg.sum())


def _cumulative(counts: Counts) -> tuple[torch.Tensor, torch.Tensor]:
    """True / false positives at each threshold, from the highest score down (float64)."""
    tps = torch.cumsum(counts.pos.flip(0), 0).double()
    fps = torch.cumsum(counts.neg.flip(0), 0).double()
    return tps, fps


def metrics_from_counts(counts: Counts, tpr_level: float = TPR_LEVEL) -> dict[str, float | None]:
    """AUROC, AUPR (average precision) and FPR at `tpr_level` TPR; None when a class is absent."""
    p, n = counts.num_pos, counts.num_neg
    if p == 0 or n == 0:
        return {"auroc": None, "aupr": None, "fpr95": None}
    tps, fps = _cumulative(counts)
    zero = torch.zeros(1, dtype=torch.float64)
    tp0, fp0 = torch.cat([zero, tps[:-1]]), torch.cat([zero, fps[:-1]])
    auroc = float(((fps - fp0) * (tps + tp0)).sum() / 2 / (p * n))
    aupr = float(((tps - tp0) * tps / (tps + fps)).sum() / p)
    # integer comparison: TPR >= level  <=>  tp * 10^6 >= level * 10^6 * P, free of float rounding
    reached = (tps * 1_000_000 >= round(tpr_level * 1_000_000) * p).nonzero()
    fpr = float(fps[int(reached[0])] / n)
    return {"auroc": auroc, "aupr": aupr, "fpr95": fpr}


def curves_from_counts(counts: Counts, shift: int = 0, max_points: int = 400) -> dict[str, list[float]]:
    """ROC (fpr, tpr) and PR (recall, precision) points, thinned to about `max_points` for plots."""
    p, n = counts.num_pos, counts.num_neg
    if p == 0 or n == 0:
        return {}
    tps, fps = _cumulative(counts)
    idx = torch.unique(torch.linspace(0, len(tps) - 1, min(len(tps), max_points)).round().long())
    thresholds = key_to_float(counts.keys.flip(0)[idx], shift)
    tpr, fpr = tps[idx] / p, fps[idx] / n
    precision = tps[idx] / (tps[idx] + fps[idx])
    return {"fpr": [0.0] + fpr.tolist(), "tpr": [0.0] + tpr.tolist(), "recall": tpr.tolist(),
            "precision": precision.tolist(), "threshold": thresholds.tolist()}


class PooledCounts:
    """Counts per (binned) key over a whole split, merged in batches to bound time and memory."""

    def __init__(self, mantissa_bits: int = 16, flush_every: int = 2_000_000):
        if not 0 <= mantissa_bits <= 23:
            raise ValueError("mantissa_bits must be within 0..23 (23 = exact float32)")
        self.shift = 23 - mantissa_bits
        self.flush_every = flush_every
        self.total = Counts.empty()
        self.buffer: list[Counts] = []
        self.buffered = 0

    def add(self, exact: Counts) -> None:
        part = exact.coarsen(self.shift)
        self.buffer.append(part)
        self.buffered += len(part.keys)
        if self.buffered >= max(self.flush_every, len(self.total.keys)):
            self._flush()

    def _flush(self) -> None:
        self.total = Counts.merge([self.total, *self.buffer])
        self.buffer, self.buffered = [], 0

    def counts(self) -> Counts:
        self._flush()
        return self.total


def convention(anomaly_labels: Iterable[int], ignore_index: int, mantissa_bits: int) -> str:
    labels = ", ".join(str(x) for x in anomaly_labels)
    return (f"higher score = more anomalous; positives: pixels labelled {labels}; negatives: every other "
            f"labelled pixel; pixels with the ignore index {ignore_index} are excluded from both. "
            "per_image: metrics on each image holding both positives and negatives, then averaged "
            "(images lacking either are skipped and counted), as hendrycks/anomaly-seg; "
            "pooled: all pixels of the split ranked together, as the SML code. "
            f"FPR95 = lowest FPR among thresholds with TPR >= {TPR_LEVEL}; AUPR = average precision. "
            f"Per-image ranks are exact; pooled scores are binned to {mantissa_bits} float mantissa bits "
            f"(relative bin width 2^-{mantissa_bits}).")


class AnomalyEvaluator:
    """Accumulates per-image and pooled statistics for several methods over a split."""

    def __init__(self, methods: Sequence[str], anomaly_labels: Sequence[int], ignore_index: int = 255,
                 mantissa_bits: int = 16):
        if not anomaly_labels:
            raise ValueError("anomaly evaluation needs at least one anomaly label")
        self.methods = list(methods)
        self.anomaly_labels = torch.tensor(sorted(set(anomaly_labels)), dtype=torch.long)
        self.ignore_index = ignore_index
        self.mantissa_bits = mantissa_bits
        self.pooled = {m: PooledCounts(mantissa_bits) for m in self.methods}
        self.per_image: dict[str, list[dict[str, float | None]]] = {m: [] for m in self.methods}
        self.images = 0
        self.images_without_anomaly = 0
        self.images_only_anomaly = 0

    def update(self, scores: dict[str, torch.Tensor], target: torch.Tensor) -> None:
        """scores: {method: (H, W) or (N, H, W)}; target: matching label map(s)."""
        target = target.detach().cpu().long()
        if target.dim() == 2:
            target = target[None]
            scores = {m: s[None] if s.dim() == 2 else s for m, s in scores.items()}
        for i, t in enumerate(target):
            valid = (t != self.ignore_index).reshape(-1)
            positive = torch.isin(t.reshape(-1)[valid], self.anomaly_labels)
            p = int(positive.sum())
            self.images += 1
            self.images_without_anomaly += p == 0
            self.images_only_anomaly += p == int(valid.sum()) and p > 0
            for m in self.methods:
                s = scores[m][i]
                if s.shape != t.shape:
                    raise ValueError(f"{m}: score map {tuple(s.shape)} and labels {tuple(t.shape)} differ in shape")
                counts = Counts.from_keys(order_keys(s)[valid], positive)
                self.pooled[m].add(counts)
                if 0 < p < int(valid.sum()):
                    self.per_image[m].append(metrics_from_counts(counts))

    def result(self, curves: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "convention": convention(self.anomaly_labels.tolist(), self.ignore_index, self.mantissa_bits),
            "anomaly_labels": self.anomaly_labels.tolist(),
            "ignore_index": self.ignore_index,
            "images": self.images,
            "images_without_anomaly": self.images_without_anomaly,
            "images_only_anomaly": self.images_only_anomaly,
            "methods": {},
        }
        for m in self.methods:
            pooled = self.pooled[m].counts()
            per = self.per_image[m]
            entry: dict[str, Any] = {
                "pooled": {**metrics_from_counts(pooled), "positives": pooled.num_pos, "negatives": pooled.num_neg},
                "per_image": {**{k: _mean_std([r[k] for r in per]) for k in ("auroc", "aupr", "fpr95")},
                              "images_used": len(per), "images_skipped": self.images - len(per)},
            }
            if curves:
                entry["curves"] = curves_from_counts(pooled, self.pooled[m].shift)
            out["methods"][m] = entry
        return out


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None}
    mean = sum(v) / len(v)
    return {"mean": mean, "std": math.sqrt(sum((x - mean) ** 2 for x in v) / len(v))}
