"""The seed's inconsistent scoring against consistent ones, on the same data and budget.

    python benchmarks/text_query.py [--steps 1500] [--batch 8] [--threads 1] [--out runs/bench_text_query]

Trains the text-query dense detector once per scoring from the same seed on the same synthetic
shapes (128 px, class names as queries):
- seed: score = sigmoid(similarity), the CAM confidence trained with binary focal targets; box
  quality neither learnt nor used;
- consistent: plus a box-quality branch trained at every location (to the IoU its box achieves
  at positives, 0 elsewhere by default, see --quality-target);
  score = sigmoid(similarity) ** 0.5 * sigmoid(quality) ** 0.5;
- iou_aware: no separate branch; the similarity itself is trained to the IoU its box achieves
  at positives and 0 elsewhere (quality focal loss), score = sigmoid(similarity).
Everything else (backbone, assignment, L1 + GIoU box losses, steps, batches, data order) is
identical. Prints, in one run:
- COCO mAP / mAP50 on the validation split (visiondoctor.evaluation.coco) and the score-IoU
  Spearman correlation and high-score/low-IoU share (visiondoctor.evaluation.consistency);
- the seed's check: IoU and score of detections at would-be training positives versus the rest;
- open-vocabulary AP for held-out query names (synonyms; classes absent from training),
  separately from the training names.
The full runs (report.html included) stay under --out.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps per variant (the shared budget)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--ov-images", type=int, default=100, help="images of the open-vocabulary test set")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--encoder", default="auto", choices=("auto", "minilm", "hashed"))
    p.add_argument("--variants", default="seed,consistent,iou_aware",
                   help="scorings to train, comma-separated, seed first (model.score_fn)")
    p.add_argument("--quality-target", default="positives", choices=("positives", "any_class", "same_class"),
                   help="the consistent variant's box-quality target away from positives (assign.quality_targets)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; more than 1 only on an idle machine (OpenMP threads spin-wait when cores are shared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_text_query")
    return p.parse_args()


def run_variant(scoring: str, args: argparse.Namespace) -> tuple[dict, float]:
    from visiondoctor.tasks.pipeline import train
    from visiondoctor.text_query.task import TextQueryTask, default_config

    cfg = default_config(name=scoring, output_dir=args.out, scoring=scoring, encoder=args.encoder,
                         loss={"quality_target": args.quality_target})
    steps_per_epoch = max(1, args.train_images // args.batch)  # the Trainer drops the last partial batch
    epochs = math.ceil(args.steps / steps_per_epoch)
    cfg.data = replace(cfg.data, synth_images=args.train_images,
                       synth_options={**cfg.data.synth_options, "num_val": args.val_images})
    cfg.train = replace(cfg.train, epochs=epochs, batch_size=args.batch, lr=args.lr, seed=args.seed,
                        eval_every=epochs, checkpoint_every=epochs, device="cpu")
    started = time.perf_counter()
    run = train(TextQueryTask(open_vocabulary_images=args.ov_images), cfg)
    elapsed = time.perf_counter() - started
    return {"metrics": run.read_json("metrics.json"), "analysis": run.read_json("text_query.json"),
            "steps": run.read_json("train_result.json")["steps"], "run": str(run.path)}, elapsed


def f(value: object, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if variants[0] != "seed":
        raise SystemExit("--variants: the first variant must be 'seed' (the reference the others are compared to)")
    results = {}
    for scoring in variants:
        print(f"training variant {scoring!r}: {args.steps} steps of {args.batch} images ...", flush=True)
        results[scoring], seconds = run_variant(scoring, args)
        results[scoring]["seconds"] = seconds

    print(f"\nText-query dense detector, shapes 128 px, {args.train_images} train / {args.val_images} val images, "
          f"same seed, {results['seed']['steps']} steps of {args.batch} each, encoder "
          f"{results['seed']['analysis']['encoder']}, {args.threads} CPU threads, consistent quality target "
          f"{args.quality_target}")
    others = variants[1:]
    header = f"{'':34s}{'seed':>10s}" + "".join(f"{v:>12s}" for v in others) + "".join(f"{v + ' - seed':>20s}" for v in others)
    print(header)
    print("-" * len(header))

    def row(name: str, getter) -> None:
        values = [getter(results[v]) for v in variants]
        diffs = [f"{b - values[0]:+.3f}" if isinstance(values[0], float) and isinstance(b, float) else "—"
                 for b in values[1:]]
        print(f"{name:34s}{f(values[0]):>10s}" + "".join(f"{f(v):>12s}" for v in values[1:])
              + "".join(f"{d:>20s}" for d in diffs))

    pvr = lambda r, pop, grp, key: r["analysis"]["positives_vs_rest"][pop][grp][key]
    row("mAP (val, COCO 0.50:0.95)", lambda r: r["metrics"]["map"])
    row("mAP50", lambda r: r["metrics"]["map50"])
    row("score-IoU Spearman (detections)", lambda r: r["analysis"]["consistency"]["spearman"])
    row("high-score low-IoU share", lambda r: r["analysis"]["consistency"]["high_score_low_iou_share"])
    row("detections at positives: n", lambda r: pvr(r, "detections", "positive", "n"))
    row("  mean IoU", lambda r: pvr(r, "detections", "positive", "mean_iou"))
    row("  mean score", lambda r: pvr(r, "detections", "positive", "mean_score"))
    row("detections elsewhere: n", lambda r: pvr(r, "detections", "rest", "n"))
    row("  mean IoU", lambda r: pvr(r, "detections", "rest", "mean_iou"))
    row("  mean score", lambda r: pvr(r, "detections", "rest", "mean_score"))
    row("candidates elsewhere: Spearman", lambda r: pvr(r, "candidates", "rest", "spearman"))
    row("training + evaluation seconds", lambda r: float(r["seconds"]))

    print("\nOpen vocabulary, mAP50 (mAP) per group: AP per query against the class it names, on images with all 7 shapes")
    groups = results["seed"]["analysis"].get("open_vocabulary", {}).get("groups", {})
    print(f"{'group':10s}{'queries':52s}" + "".join(f"{v:>16s}" for v in variants))
    for name, group in groups.items():
        queries = ", ".join(f"{q}->{v['class']}" if q != v["class"] else q for q, v in group["queries"].items())
        cells = []
        for v in variants:
            g = results[v]["analysis"]["open_vocabulary"]["groups"][name]
            cells.append(f"{f(g['map50'])} ({f(g['map'])})")
        print(f"{name:10s}{queries[:50]:52s}" + "".join(f"{c:>16s}" for c in cells))
    for v in variants:
        ov = results[v]["analysis"]["open_vocabulary"]["groups"]
        print(f"per query AP50 ({v}):", ", ".join(f"{q} {f(r['ap50'], 2)}" for g in ov.values() for q, r in g["queries"].items()))
    print("\nruns:", "  ".join(results[v]["run"] for v in variants))


if __name__ == "__main__":
    main()
