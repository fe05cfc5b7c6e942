"""Peak resident memory of the anomaly metrics over 500 images of 512 x 512 (the issue's bound:
under 2 GB), on synthetic scores (no model), in one run, beside what the usual approach needs
(every score and label of the split held at once and argsorted, as sklearn's roc_curve does).

    python benchmarks/anomaly_memory.py [--images 500] [--size 512] [--methods 4]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visiondoctor.evaluation.anomaly import AnomalyEvaluator  # noqa: E402

LIMIT_GB = 2.0


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # ru_maxrss is in KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--methods", type=int, default=4, help="score maps per image (one per method)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    methods = [f"m{i}" for i in range(args.methods)]
    evaluator = AnomalyEvaluator(methods, anomaly_labels=[13], ignore_index=255)
    g = torch.Generator().manual_seed(0)
    base = peak_rss_gb()
    started = time.perf_counter()
    for i in range(args.images):
        labels = torch.randint(0, 13, (args.size, args.size), generator=g)
        labels[: args.size // 16, : args.size // 8] = 13  # an anomaly block in every image
        labels[-2:] = 255
        noise = torch.randn(args.methods, args.size, args.size, generator=g)
        scores = {m: noise[j] + (labels == 13) * (0.5 + 0.5 * j) for j, m in enumerate(methods)}
        evaluator.update(scores, labels)
    result = evaluator.result()
    seconds = time.perf_counter() - started
    peak = peak_rss_gb()
    pixels = args.images * args.size * args.size
    # sklearn-style: float32 scores + int64 labels of the split, then a float64 copy and an int64 argsort
    reference_gb = pixels * (4 + 8 + 8 + 8) / 1024 ** 3
    print(f"{args.images} images x {args.size}x{args.size} px x {args.methods} methods = {pixels * args.methods:,} scores "
          f"in {seconds:.0f} s")
    print(f"{'':34s} {'ours':>8s} {'all-in-memory':>14s} {'ratio':>6s}")
    print(f"{'peak RSS [GB]':34s} {peak:8.2f} {reference_gb:14.2f} {reference_gb / peak:6.1f}x"
          f"   (ours: {args.methods} methods streamed together; all-in-memory: one method, estimated, not run)")
    print(f"{'growth while streaming [GB]':34s} {peak - base:8.2f}")
    print(f"bound {LIMIT_GB} GB: {'met' if peak < LIMIT_GB else 'EXCEEDED'}")
    print("pooled AUROC per method (separations 0.5, 1.0, ...):",
          ", ".join(f"{result['methods'][m]['pooled']['auroc']:.4f}" for m in methods))
    return 0 if peak < LIMIT_GB else 1


if __name__ == "__main__":
    sys.exit(main())
