"""Training throughput (images/s) of visiondoctor's Trainer vs a plain torchvision-reference-style
loop: same model, input size, batch, data, loader workers and device, side by side with the ratio,
in one run. On CPU always; on the GPU too when one is present.

The reference loop is torchvision's references/detection `train_one_epoch` reduced to what
costs time: `losses = model(images, targets)`, sum, zero_grad, backward, step (plus its
`--amp` variant with a GradScaler on GPU). The Trainer runs with its defaults for the device
(on CUDA: bf16/fp16 autocast, channels_last, pinned memory), so the ratio says what those
defaults buy and what the Trainer's bookkeeping (schedule, clipping, per-loss logging,
callbacks, progress bar) costs.

Machines shared with other work drift; the loops therefore take turns (`--rounds`), each
round timing `--steps` steps after `--warmup` untimed ones, and the median round is reported.

    python benchmarks/throughput.py                       # CPU, then CUDA if available
    python benchmarks/throughput.py --device cuda --batch-size 32 --compile
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visiondoctor.config import TrainConfig  # noqa: E402
from visiondoctor.data.dataset import DetectionDataset, collate_detection  # noqa: E402
from visiondoctor.data.formats import load_detection  # noqa: E402
from visiondoctor.data.samples import CategoryMap  # noqa: E402
from visiondoctor.data.synth import generate  # noqa: E402
from visiondoctor.data.transforms import detection_transforms  # noqa: E402
from visiondoctor.engine.callbacks import Callback, TrainState  # noqa: E402
from visiondoctor.engine.trainer import Trainer  # noqa: E402
from visiondoctor.models.registry import create_model  # noqa: E402


class StepTimer(Callback):
    """Times steps after `warmup` of them; stops the Trainer after `warmup + steps`."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.images, self.start, self.seconds = 0, 0.0, 0.0
        self.done = 0

    def after_step(self, state: TrainState) -> None:
        _sync(self.device)
        self.done += 1
        if self.done == self.warmup:
            self.start = time.perf_counter()
        elif self.done > self.warmup:
            self.images += len(state.images) if isinstance(state.images, (list, tuple)) else int(state.images.shape[0])
        if self.done == self.warmup + self.steps:
            self.seconds = time.perf_counter() - self.start
            state.stop = True

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(args.model, num_classes=num_classes, image_size=args.image_size)


def reference_round(args, dataset: Dataset, num_classes: int, device: torch.device, amp: bool) -> float:
    """torchvision references/detection style: plain loop, shuffled loader, SGD; images/s."""
    model = build_model(args, num_classes).to(device).train()
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        collate_fn=collate_detection, drop_last=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type) if amp else None
    done, images, start = 0, 0, 0.0
    while done < args.warmup + args.steps:
        for batch_images, targets in loader:
            batch_images = [im.to(device) for im in batch_images]
            targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, enabled=amp):
                losses = model(batch_images, targets)
                loss = sum(losses.values())
            optimizer.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            _sync(device)
            done += 1
            if done == args.warmup:
                start = time.perf_counter()
            elif done > args.warmup:
                images += len(batch_images)
            if done == args.warmup + args.steps:
                break
    return images / (time.perf_counter() - start)


def trainer_round(args, dataset: Dataset, num_classes: int, device: torch.device) -> float:
    """visiondoctor's Trainer with the device's defaults (amp/channels_last auto); images/s."""
    timer = StepTimer(args.warmup, args.steps, device)
    cfg = TrainConfig(epochs=10_000, batch_size=args.batch_size, lr=0.01, warmup_steps=0, device=str(device),
                      monitors=False, compile=args.compile)
    trainer = Trainer(build_model(args, num_classes), dataset, cfg, collate_fn=collate_detection, callbacks=[timer],
                      workers=args.workers)
    trainer.fit()
    return timer.rate


def make_dataset(args: argparse.Namespace, folder: Path) -> tuple[Dataset, int]:
    generate("shapes", folder, num_images=args.images, seed=0, num_val=1, num_test=1, image_size=args.image_size)
    index = load_detection(folder, "coco", "train")
    category_map = CategoryMap.from_categories(index.categories)
    return DetectionDataset(index, category_map, detection_transforms(train=False)), category_map.num_classes


def bench_device(args: argparse.Namespace, device: torch.device, dataset: Dataset, num_classes: int) -> None:
    loops = {"reference": lambda: reference_round(args, dataset, num_classes, device, amp=False),
             "visiondoctor": lambda: trainer_round(args, dataset, num_classes, device)}
    if device.type == "cuda":
        loops["reference --amp"] = lambda: reference_round(args, dataset, num_classes, device, amp=True)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, run in loops.items():
            rates[name].append(run())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.model} @ {args.image_size}px, batch {args.batch_size}, {args.workers} loader workers, "
          f"{device.type}: {name}; median of {args.rounds} rounds x {args.steps} steps (after {args.warmup} warm-up)")
    ref = statistics.median(rates["reference"])
    print(f"{'loop':18s}{'images/s':>10s}{'ratio':>8s}   rounds")
    for loop, values in rates.items():
        median = statistics.median(values)
        print(f"{loop:18s}{median:10.2f}{median / ref:8.2f}   {' '.join(f'{v:.2f}' for v in values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="all", help="cpu, cuda, or all (cpu, then cuda when present)")
    parser.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 on CPU, 32 on GPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: 4 CPU, 50 GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per round (default: 1 CPU, 10 GPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: 0 CPU, 4 GPU)")
    parser.add_argument("--images", type=int, default=64, help="synthetic training images")
    parser.add_argument("--compile", action="store_true", help="torch.compile in the Trainer (train.compile)")
    args = parser.parse_args()

    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device == "cuda" or (args.device == "all" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    if args.device == "all" and not torch.cuda.is_available():
        print("no CUDA device: CPU only")
    with tempfile.TemporaryDirectory() as tmp:
        dataset, num_classes = make_dataset(args, Path(tmp))
        for device in devices:
            gpu = device.type == "cuda"
            per_device = replace_defaults(args, gpu)
            bench_device(per_device, device, dataset, num_classes)


def replace_defaults(args: argparse.Namespace, gpu: bool) -> argparse.Namespace:
    defaults = {"batch_size": (4, 32), "steps": (4, 50), "warmup": (1, 10), "workers": (0, 4)}
    out = argparse.Namespace(**vars(args))
    for key, (cpu_value, gpu_value) in defaults.items():
        if getattr(out, key) is None:
            setattr(out, key, gpu_value if gpu else cpu_value)
    return out


if __name__ == "__main__":
    main()
