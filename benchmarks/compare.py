"""Several detectors on the same shapes data with the same wall-clock training budget each, then
`visiondoctor compare`: accuracy, per-class AP, train vs validation curves, speed in each runtime.

Every model trains from scratch (no downloads) through the same engine and recipe (SGD, lr 0.05,
warmup, cosine over the budget, batch 8), at the same input size, evaluated on the same validation
split; latency is measured afterwards on CPU, one image at a time, 1 thread, in eager PyTorch,
TorchScript and ONNX Runtime, timed interleaved. The table printed at the end is the one for the
README; nothing is tuned per model except its anchor scale to the image size. Each mAP comes with
its 95 % bootstrap interval over the validation images, and every pair of models with the paired
test of its difference (visiondoctor.evaluation.bootstrap, through `visiondoctor compare`).

    python benchmarks/compare.py [--minutes 10] [--size 128] [--models ssdlite320_mobilenet_v3_large,...]

The default budget, 10 minutes per model, is where the accuracy columns start to rank the models
(at 2.5 minutes they were all near zero). A proposal from the figures at hand, to be checked by the
run itself (the intervals say whether it ranks them):
- The demo's learning curve (visiondoctor/presets/demo.yaml): a detector from scratch on shapes
  leaves the near-zero regime after about 300 steps of 16 images, ~5,000 training images
  (mAP@.5 0.25-0.37 there at 320 px), and approaches its plateau after ~25,000.
- Training throughput, estimated from the README's per-image inference times at 128 px, 1 thread
  (a training step, forward + backward + loss, costs about 3 inference forwards): SSDLite-Large
  41.6 ms -> ~8 images/s, SSD-MobileNetV2-FPNLite 43.9 ms -> ~7.5, EfficientDet-D1 139 ms -> ~2.4,
  RetinaNet-R50 233 ms -> ~1.4.
- So 5,000 images take the two mobile detectors ~10-11 minutes (~20 epochs of the 240 images):
  at 10 minutes both are past the knee, with mAP clearly above zero, while EfficientDet (~1,400
  images) and RetinaNet (~850) are still below it. That ranks the models at equal CPU time (the
  question this benchmark asks); ranking the heavy models among themselves would take ~60 minutes
  each (RetinaNet to 5,000 images). Four models at 10 minutes: ~45 minutes in all.
- `--val` defaults to 100 images (was 40): the interval's width falls as 1/sqrt(images), so 100
  images narrow it by ~37 % for seconds of extra evaluation.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visiondoctor.config import load_config  # noqa: E402
from visiondoctor.report.compare import compare_runs, difference_rows  # noqa: E402
from visiondoctor.tasks.pipeline import task_for, train  # noqa: E402
from visiondoctor.tasks.speed import measure_run  # noqa: E402

# Anchor settings scaled to small images (torchvision's defaults target 300-800 px inputs).
MODEL_KWARGS = {
    "ssdlite320_mobilenet_v3_large": "{anchor_min_ratio: 0.1}",
    "ssd_mobilenet_v2_fpnlite": "{anchor_scale: 2.0}",
    "retinanet_resnet50_fpn": "{}",
    "efficientdet_d1": "{}",
    "fasterrcnn_mobilenet_v3_large_fpn": "{}",
}
DEFAULT_MINUTES = 10.0  # where the accuracy columns rank the models (see the docstring)
DEFAULT_MODELS = ["ssdlite320_mobilenet_v3_large", "ssd_mobilenet_v2_fpnlite", "retinanet_resnet50_fpn",
                  "efficientdet_d1"]


def train_one(model: str, args: argparse.Namespace, out: Path) -> Path:
    cfg = load_config(None, [
        "data.synth=shapes", f"data.synth_images={args.train}",
        f"data.synth_options={{num_val: {args.val}, num_test: 16, image_size: {args.size}, min_size: 12, "
        f"max_size: {args.size // 2}}}",
        f"model.name={model}", f"model.image_size={args.size}", f"model.kwargs={MODEL_KWARGS.get(model, '{}')}",
        "train.epochs=1000", f"train.max_minutes={args.minutes}", "train.batch_size=8", f"train.lr={args.lr}",
        "train.warmup_steps=30", "train.monitors=false", f"train.seed={args.seed}", f"output_dir={out}", f"name={model}",
    ])
    return train(task_for(cfg), cfg).path


def fmt(v: object, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                    help="training budget per model (wall clock; the default's arithmetic is in the docstring)")
    ap.add_argument("--size", type=int, default=128, help="image and input size (EfficientDet needs a multiple of 128)")
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--val", type=int, default=100, help="validation images (the intervals narrow with more)")
    ap.add_argument("--lr", type=float, default=0.05, help="SGD learning rate, the same for every model")
    ap.add_argument("--latency-runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for training (1: on a shared machine more threads spin-wait; 0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "_bench_compare"))
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "efficientdet_d1" in models and importlib.util.find_spec("effdet") is None:
        print("effdet not installed (pip install visiondoctor[effdet]): skipping efficientdet_d1")
        models.remove("efficientdet_d1")
    out = Path(args.out)
    runs, trained = [], {}
    for model in models:
        started = time.perf_counter()
        run = train_one(model, args, out)
        trained[model] = time.perf_counter() - started
        measure_run(run, runs=args.latency_runs, warmup=3, threads=1)
        runs.append(run)
    comparison = compare_runs(runs, out / "comparison.html")
    intervals = comparison.significance.intervals if comparison.significance else {}

    header = ("model", "params [M]", "GFLOPs", "steps", "epochs", "mAP [95 % interval]", "AP50 [95 % interval]",
              "AR@100", "eager [ms]", "TorchScript [ms]", "ONNX RT [ms]", "ORT speed-up")
    rows = []
    for model, run, name in zip(models, runs, (r.name for r in comparison.runs)):
        metrics = json.loads((run / "metrics.json").read_text())
        accuracy = [str(intervals[name][k]) if name in intervals else fmt(metrics.get(k)) for k in ("map", "map50")]
        result = json.loads((run / "train_result.json").read_text())
        latency = json.loads((run / "latency.json").read_text())
        lat = latency["latency_ms"]
        speedup = lat["pytorch"] / lat["onnxruntime"] if "onnxruntime" in lat and "pytorch" in lat else None
        flops = fmt(latency["flops"] / 1e9 if latency["flops"] else None, 2)
        rows.append((model, fmt(latency["params"] / 1e6, 2), flops, result["steps"], result["epochs"], *accuracy,
                     fmt(metrics.get("mar_100")), fmt(lat.get("pytorch"), 1), fmt(lat.get("torchscript"), 1),
                     fmt(lat.get("onnxruntime"), 1), f"{speedup:.2f}x" if speedup else "n/a"))
    print(f"\n{len(models)} detectors, {args.minutes:g} min of training each ({torch.get_num_threads()} thread(s)) on "
          f"shapes ({args.train} train / {args.val} val images, {args.size} px); CPU latency at batch 1, 1 thread:\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    if comparison.significance:
        columns, pairs = difference_rows(comparison.significance)
        print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for row in pairs:
            print("| " + " | ".join(str(c) for c in row) + " |")
        print(f"\n{comparison.significance.describe()}")
    else:
        print(f"\nno confidence intervals: {comparison.no_significance_reason}")
    print(f"\ntotal wall clock {sum(trained.values()) / 60:.1f} min of training + evaluation; "
          f"report: {comparison.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
