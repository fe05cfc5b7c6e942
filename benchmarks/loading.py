"""Training images/s on large photos vs the same photos already at the model's input size, side by side.

The large dataset is the project's shapes generator at `--image-size` px (JPEG, objects 3-15 % of
the width, like a 2048x1371 Roboflow export); the small one is the same dataset with every image
reduced to the model's input size (shorter side `--input-size`, boxes scaled) and saved as JPEG
again. The same model (default: SSDLite at 320 px) is trained for the same steps on each through
the run pipeline's own datasets and loader (`DetectionTask.datasets`, `fit_model`: data.reduce,
data.cache and data.workers as given), and the images/s are printed with their ratio and the
target: training on the large photos within 1.5x of the small ones. `--baseline` adds the large
photos with `data.reduce=off` (decoding and augmenting at full size, as before the reduction).

Machines shared with other work drift; the datasets therefore take turns (`--rounds`), each round
timing `--steps` steps after `--warmup` untimed ones (loader start included in the warm-up), and
the median round is reported. Deterministic (seeded generator, seeded models) and offline.

    python benchmarks/loading.py                          # 64 images of 2048 px, CPU or the GPU
    python benchmarks/loading.py --device cuda --batch-size 32 --steps 40 --cache ram
    python benchmarks/loading.py --data-dir /tmp/loading  # keep the generated datasets for the next run
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throughput import StepTimer  # benchmarks/throughput.py, beside this script

from visiondoctor.config import Config, config_from_dict
from visiondoctor.data.formats import list_splits, load_detection
from visiondoctor.data.formats.coco import ROBOFLOW_COCO_FILE, write_coco
from visiondoctor.data.images import load_rgb_reduced
from visiondoctor.data.loading import loader_workers
from visiondoctor.data.synth import generate
from visiondoctor.engine.trainer import resolve_device
from visiondoctor.tasks.pipeline import fit_model, task_for

TARGET_RATIO = 1.5


def make_large(folder: Path, args: argparse.Namespace) -> Path:
    """The shapes dataset at `args.image_size` px (kept when `folder` already holds a complete one)."""
    if not (folder / "generation_summary.json").exists():
        side = args.image_size
        generate("shapes", folder, num_images=args.images, seed=0, num_val=2, num_test=0, image_size=side,
                 min_size=0.03 * side, max_size=0.15 * side, small_fraction=0.0, supersample=2)
    return folder


def make_small(large: Path, folder: Path, side: int) -> Path:
    """`large` with every image reduced to shorter side `side` (JPEG again, boxes scaled), same layout."""
    if (folder / "done").exists():
        return folder
    for split in list_splits(large, "coco"):
        index = load_detection(large, "coco", split)
        out = folder / Path(index.source).parent.name
        out.mkdir(parents=True, exist_ok=True)
        records = []
        for record in index.records:
            pixels, (width, height) = load_rgb_reduced(record.path, side)
            h, w = pixels.shape[-2:]
            Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(out / record.file_name, quality=90)
            sx, sy = w / width, h / height
            boxes = [(x1 * sx, y1 * sy, x2 * sx, y2 * sy) for x1, y1, x2, y2 in record.boxes]
            records.append(dataclasses.replace(record, path=out / record.file_name, width=w, height=h, boxes=boxes,
                                               areas=[(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]))
        write_coco(dataclasses.replace(index, root=out, records=records), out / ROBOFLOW_COCO_FILE, images_root=out)
    (folder / "done").write_text("")
    return folder


def run_config(root: Path, args: argparse.Namespace, output_dir: Path, reduce: str) -> Config:
    return config_from_dict({
        "data": {"path": str(root), "reduce": reduce, "cache": args.cache, "workers": args.workers},
        "model": {"name": args.model, "image_size": args.input_size, "pretrained": False, "pretrained_backbone": False},
        "train": {"epochs": 10_000, "batch_size": args.batch_size, "lr": 0.01, "warmup_steps": 0,
                  "device": args.device, "monitors": False},
        "output_dir": str(output_dir),
    })


def train_round(cfg: Config, args: argparse.Namespace) -> tuple[float, int]:
    """images/s of `steps` timed training steps through the run pipeline's datasets and loader; the workers used."""
    task = task_for(cfg)
    data = task.load_data(cfg)
    sets = dataclasses.replace(task.datasets(cfg, data), val=None)  # training only
    torch.manual_seed(0)
    model = task.build_model(cfg, data.categories(), None)
    timer = StepTimer(args.warmup, args.steps, resolve_device(cfg.train.device))
    fit_model(model, sets, cfg, None, loss_fn=task.loss_fn(cfg, data), callbacks=[timer])
    return timer.rate, loader_workers(cfg.data, sets.train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (the GPU when present), cpu or cuda")
    parser.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    parser.add_argument("--input-size", type=int, default=320, help="model.image_size")
    parser.add_argument("--image-size", type=int, default=2048, help="side of the large generated images")
    parser.add_argument("--images", type=int, default=64, help="training images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", default="none", help="data.cache: none, ram or disk")
    parser.add_argument("--workers", default="auto", help="data.workers: auto or a number")
    parser.add_argument("--baseline", action="store_true", help="also time the large images with data.reduce=off")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep (and reuse) the generated datasets here")
    args = parser.parse_args()
    args.workers = int(args.workers) if args.workers.isdigit() else args.workers

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        large = make_large(data_dir / f"shapes_{args.image_size}px_n{args.images}", args)
        small = make_small(large, data_dir / f"shapes_{args.image_size}px_n{args.images}_at_{args.input_size}px",
                           args.input_size)
        cases = {f"large ({args.image_size} px JPEG)": run_config(large, args, Path(tmp) / "runs", "auto"),
                 f"at input size ({args.input_size} px)": run_config(small, args, Path(tmp) / "runs", "auto")}
        if args.baseline:
            cases["large, data.reduce=off"] = run_config(large, args, Path(tmp) / "runs", "off")
        rates: dict[str, list[float]] = {name: [] for name in cases}
        workers: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, cfg in cases.items():
                rate, workers[name] = train_round(cfg, args)
                rates[name].append(rate)

    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\n{args.model} @ {args.input_size} px, batch {args.batch_size}, {device.type} ({where}); "
          f"data.cache={args.cache}, data.workers={args.workers}; {args.images} training images; "
          f"median of {args.rounds} rounds x {args.steps} steps (after {args.warmup} warm-up)")
    print(f"{'dataset':32s}{'images/s':>10s}{'workers':>9s}   rounds")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"{name:32s}{medians[name]:10.2f}{workers[name]:9d}   {' '.join(f'{v:.2f}' for v in values)}")
    large_rate, small_rate = list(medians.values())[:2]
    ratio = small_rate / large_rate if large_rate > 0 else float("inf")
    verdict = "met" if ratio <= TARGET_RATIO else "not met"
    print(f"ratio (input size / large): {ratio:.2f}x; target 'large within {TARGET_RATIO}x of input size': {verdict}")


if __name__ == "__main__":
    main()
