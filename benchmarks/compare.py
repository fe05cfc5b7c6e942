"""Several detectors on the same shapes data with the same wall-clock training budget each, then
`visiondoctor compare`: accuracy, per-class AP, train vs validation curves, speed in each runtime.

Every model trains from scratch (no downloads) through the same engine and recipe (SGD, lr 0.05,
warmup, cosine over the budget, batch 8), at the same input size, evaluated on the same validation
split; latency is measured afterwards on CPU, one image at a time, 1 thread, in eager PyTorch,
TorchScript and ONNX Runtime, timed interleaved. The table printed at the end is the one for the
README; nothing is tuned per model except its anchor scale to the image size.

    python benchmarks/compare.py [--minutes 2.5] [--size 128] [--models ssdlite320_mobilenet_v3_large,...]
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
from visiondoctor.report.compare import build_comparison_report  # noqa: E402
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
    ap.add_argument("--minutes", type=float, default=2.5, help="training budget per model (wall clock)")
    ap.add_argument("--size", type=int, default=128, help="image and input size (EfficientDet needs a multiple of 128)")
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--val", type=int, default=40)
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
    report = build_comparison_report(runs, out / "comparison.html")

    header = ("model", "params [M]", "GFLOPs", "steps", "epochs", "mAP", "AP50", "AR@100", "eager [ms]",
              "TorchScript [ms]", "ONNX RT [ms]", "ORT speed-up")
    rows = []
    for model, run in zip(models, runs):
        metrics = json.loads((run / "metrics.json").read_text())
        result = json.loads((run / "train_result.json").read_text())
        latency = json.loads((run / "latency.json").read_text())
        lat = latency["latency_ms"]
        speedup = lat["pytorch"] / lat["onnxruntime"] if "onnxruntime" in lat and "pytorch" in lat else None
        rows.append((model, fmt(latency["params"] / 1e6, 2), fmt(latency["flops"] / 1e9 if latency["flops"] else None, 2),
                     result["steps"], result["epochs"], fmt(metrics.get("map")), fmt(metrics.get("map50")),
                     fmt(metrics.get("mar_100")), fmt(lat.get("pytorch"), 1), fmt(lat.get("torchscript"), 1),
                     fmt(lat.get("onnxruntime"), 1), f"{speedup:.2f}x" if speedup else "n/a"))
    print(f"\n{len(models)} detectors, {args.minutes:g} min of training each ({torch.get_num_threads()} thread(s)) on "
          f"shapes ({args.train} train / {args.val} val images, {args.size} px); CPU latency at batch 1, 1 thread:\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print(f"\ntotal wall clock {sum(trained.values()) / 60:.1f} min of training + evaluation; report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
