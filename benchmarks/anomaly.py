"""Anomaly segmentation on the synthetic streets, in one run: train a small DeepLabV3+ on CPU within
a wall-clock budget, then closed-set mIoU over the WHOLE test split and AUROC / AUPR / FPR95 of
MSP, MaxLogit, Energy and SML under both aggregations (pooled pixels; per-image mean), in ONE
table, beside the published StreetHazards figures whose ORDERING is the thing to compare (the
data differ, so their values are context, not a target). Whatever the data says is printed as
measured; the data are never tuned to a method.

    python benchmarks/anomaly.py [--minutes 5] [--threads 1] [--train 400] [--test 100] [--size 128]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visiondoctor.config import load_config  # noqa: E402
from visiondoctor.data.synth.streets import generate_streets  # noqa: E402
from visiondoctor.tasks.anomaly import run_anomaly  # noqa: E402
from visiondoctor.tasks.pipeline import task_for, train  # noqa: E402

METHODS = ("msp", "maxlogit", "energy", "sml")
# Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings" (ICML 2022),
# StreetHazards, PSPNet, per-image averaged: the ordering MaxLogit > MSP is what should reproduce.
PUBLISHED = {"msp": {"aupr": 6.6, "fpr95": 33.7}, "maxlogit": {"aupr": 10.6, "fpr95": 26.5}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="training wall-clock budget")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--val", type=int, default=60)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--model", default="deeplabv3plus_resnet18_lite")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "_bench_anomaly"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    data = out / f"streets_{args.train}_{args.val}_{args.test}_{args.size}_seed{args.seed}"
    if not (data / "streets.json").exists():
        generate_streets(data, args.train, args.val, args.test, args.size, args.seed)
    cfg = load_config(None, [
        "task=segmentation", f"data.path={data}", f"model.name={args.model}", f"model.image_size={args.size}",
        "train.epochs=1000", f"train.max_minutes={args.minutes}", "train.batch_size=8", "train.lr=0.02",
        "train.warmup_steps=50", f"train.seed={args.seed}", f"output_dir={out}", "name=run", "train.eval_every=5",
    ])
    started = time.perf_counter()
    run = train(task_for(cfg), cfg)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    result = run_anomaly(run.path, METHODS)
    anomaly_s = time.perf_counter() - started
    history = json.loads((run.path / "train_result.json").read_text())
    seg = result["segmentation"]

    print(f"\nsynthetic streets: {args.train} train / {args.test} test images at {args.size} px, seed {args.seed}; "
          f"{args.model}, {history['epochs']} epochs / {history['steps']} steps in {train_s / 60:.1f} min "
          f"(threads {torch.get_num_threads()}); scoring {anomaly_s:.0f} s")
    per = seg["per_image_miou"]
    print(f"closed-set mIoU, whole test split ({seg['num_images']} of {seg['total_images']} images, anomaly pixels "
          f"excluded): {100 * seg['miou']:.2f}   (per-image mean {100 * per['mean']:.2f} ± {100 * per['std']:.2f})")
    print(f"anomaly pixels: {result['methods']['msp']['pooled']['positives']} of "
          f"{result['methods']['msp']['pooled']['positives'] + result['methods']['msp']['pooled']['negatives']}\n")
    head = (f"{'method':9s} | {'AUROC':>7s} {'AUPR':>7s} {'FPR95':>7s} | {'AUROC':>13s} {'AUPR':>13s} {'FPR95':>13s} | "
            f"{'published AUPR':>14s} {'FPR95':>6s}")
    print(f"{'':9s} | {'pooled over the split':^23s} | {'per image, mean ± std':^41s} | {'StreetHazards (ref.)':^21s}")
    print(head)
    print("-" * len(head))
    for m in METHODS:
        e = result["methods"][m]
        p, q = e["pooled"], e["per_image"]
        ref = PUBLISHED.get(m, {})
        print(f"{m:9s} | {100 * p['auroc']:7.2f} {100 * p['aupr']:7.2f} {100 * p['fpr95']:7.2f} | "
              + " ".join(f"{100 * q[k]['mean']:6.2f} ± {100 * q[k]['std']:4.1f}" for k in ("auroc", "aupr", "fpr95"))
              + f" | {ref.get('aupr', float('nan')):14.1f} {ref.get('fpr95', float('nan')):6.1f}")
    print(f"\nconvention: {result['convention']}")
    pooled = {m: result["methods"][m]["pooled"] for m in METHODS}
    for a, b in (("maxlogit", "msp"), ("sml", "maxlogit")):
        better = pooled[a]["aupr"] > pooled[b]["aupr"], pooled[a]["fpr95"] < pooled[b]["fpr95"]
        print(f"{a} vs {b} (pooled): AUPR {'higher' if better[0] else 'NOT higher'}, "
              f"FPR95 {'lower' if better[1] else 'NOT lower'}")
    print(f"report: {run.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
