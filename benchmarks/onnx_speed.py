"""ONNX Runtime vs eager PyTorch (and TorchScript) on CPU, side by side, in one run.

For each model: latency per image (batch 1, same thread count in every runtime, timed interleaved
so machine load hits all runtimes alike), the speed-up of ONNX Runtime over eager PyTorch, and the
parity of the exported graph (every PyTorch detection found in ONNX Runtime's output with the same
label, IoU >= 0.99, score within 1e-4) for trained runs (`--runs`). Freshly built architectures
(`--models`, random weights) are timed only: their near-equal scores make the top-k arbitrary.

    python benchmarks/onnx_speed.py [--models ssdlite320_mobilenet_v3_large,...] [--size 320] [--threads 1]
    python benchmarks/onnx_speed.py --runs runs/a runs/b
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visiondoctor.evaluation.speed import example_image  # noqa: E402
from visiondoctor.models.registry import create_model  # noqa: E402
from visiondoctor.tasks.export import OnnxDetector, export_onnx, parity  # noqa: E402
from visiondoctor.tasks.speed import measure_runtimes, run_image  # noqa: E402

DEFAULT_MODELS = "ssdlite320_mobilenet_v3_large,ssd_mobilenet_v2_fpnlite,fasterrcnn_mobilenet_v3_large_fpn,fcos_resnet50_fpn"


def load(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module, int, torch.Tensor | None]]:
    if args.runs:
        from visiondoctor.rundir import RunDir
        from visiondoctor.tasks.pipeline import load_run_model

        out = []
        for path in args.runs:
            run = RunDir.open(path)
            model, cfg, _ = load_run_model(run, torch.device("cpu"))
            out.append((f"{run.path.name} ({cfg.model.name})", model, cfg.model.image_size, run_image(run)))
        return out
    torch.manual_seed(0)
    return [(name, create_model(name, num_classes=6, image_size=args.size), args.size, None)
            for name in args.models.split(",") if name.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    rows = []
    for name, model, size, image in load(args):
        model.eval()
        result = measure_runtimes(model, size, runs=args.repeats, warmup=3, image=image, threads=args.threads)
        check = "n/a (untrained: near-equal scores make the top-k arbitrary)"
        if args.runs:
            x = example_image(size, image)
            with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
                p = parity(model([x])[0], OnnxDetector(export_onnx(model, size, Path(tmp) / "m.onnx"))([x])[0])
            check = (f"{p.matched}/{p.compared} matched, {p.reference_count} vs {p.candidate_count} detections, "
                     f"max |dscore| {p.max_score_diff:.1e}, max |dbox| {p.max_box_diff:.2g} px")
        lat = result["latency_ms"]
        rows.append((name, size, lat.get("pytorch"), lat.get("torchscript"), lat.get("onnxruntime"),
                     lat["pytorch"] / lat["onnxruntime"] if "onnxruntime" in lat else None, check))
        print(f"{name}: {lat}  skipped: {result['skipped'] or '-'}", flush=True)

    print(f"\nCPU, batch 1, {args.threads} thread(s), median of {args.repeats} (ms per image):\n")
    print("| model | input [px] | eager PyTorch | TorchScript | ONNX Runtime | ORT speed-up vs eager | ONNX parity |")
    print("|---|---|---|---|---|---|---|")
    for name, size, eager, ts, ort, speedup, check in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else "n/a" for v in (eager, ts, ort)]
        print(f"| {name} | {size} | {' | '.join(cells)} | {f'{speedup:.2f}x' if speedup else 'n/a'} | {check} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
