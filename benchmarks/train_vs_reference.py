"""visiondoctor's engine vs a plain torchvision-reference-style loop: same model, data, seed and
wall-clock budget; prints both mAPs and images/s side by side (ratio) in one run.

The reference loop follows torchvision's references/detection/train.py defaults: SGD
(lr 0.02, momentum 0.9, weight decay 1e-4), linear warmup over the first epoch's iterations
(factor 1/1000), MultiStepLR, horizontal flip as the only augmentation, no clipping, no
norm-specific weight decay. Both are evaluated by the same COCO evaluation on the whole
validation and test splits, each mAP with its 95 % bootstrap interval over the split's images and
the paired test of the difference (visiondoctor.evaluation.bootstrap). Device options are the
same on both sides: the reference loop puts the model in `channels_last` exactly when the engine
does (the preset's `train.channels_last`, decided by the engine's own `channels_last_enabled`),
so the ratio measures the recipe, not a memory-layout flag (the demo preset measures 1.3-1.45x
from channels_last alone on the 2-core CPU).

    python benchmarks/train_vs_reference.py [--minutes 9] [--preset demo]

Both sides get the same wall-clock budget (default 9 minutes, the demo's former time budget): the
preset's step budget (train.epochs) is lifted so that time alone stops our run, as it stops the
reference loop.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visiondoctor.config import load_config  # noqa: E402
from visiondoctor.data.dataset import DetectionDataset, collate_detection  # noqa: E402
from visiondoctor.presets import preset_path  # noqa: E402
from visiondoctor.data.detection import load_detection_data  # noqa: E402
from visiondoctor.doctor.from_run import read_history  # noqa: E402
from visiondoctor.engine.trainer import channels_last_enabled  # noqa: E402
from visiondoctor.data.formats.coco import to_coco_dict  # noqa: E402
from visiondoctor.evaluation.bootstrap import compare_predictions, side_by_side  # noqa: E402
from visiondoctor.tasks.detection import DetectionTask, predict  # noqa: E402
from visiondoctor.tasks.pipeline import load_run_model, train  # noqa: E402


TARGET_MAP50 = 0.8  # the demo's target (issue 2), checked on both held-out splits
DEFAULT_MINUTES = 9.0  # the demo's training budget before it became a step budget (same figures as before)
UNBOUNDED_EPOCHS = 100_000  # with a time budget: time, not the epoch count, stops the run
SCORED = ("map", "map50", "map_small")


def reference_model(cfg, data, device: torch.device) -> torch.nn.Module:
    """The model the reference loop trains: built as ours is, in channels_last exactly when our
    engine would put it there (same device options on both sides)."""
    model = DetectionTask().build_model(cfg, data.categories(), None).to(device)
    if channels_last_enabled(cfg.train.channels_last, model, device):
        model = model.to(memory_format=torch.channels_last)
    return model


def reference_loop(cfg, data, minutes: float, device: torch.device) -> tuple[torch.nn.Module, float]:
    """torchvision references/detection style training for a wall-clock budget."""
    torch.manual_seed(cfg.train.seed)
    model = reference_model(cfg, data, device)
    transforms = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.ToDtype(torch.float32, scale=True),
                             v2.SanitizeBoundingBoxes()])
    loader = DataLoader(DetectionDataset(data.train, data.category_map, transforms), batch_size=cfg.train.batch_size,
                        shuffle=True, collate_fn=collate_detection, drop_last=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    warmup_iters = min(1000, len(loader) - 1)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup_iters)
    # MultiStepLR at 2/3 and 8/9 of the (estimated) epochs, as the reference's 26-epoch schedule does at 16 and 22.
    model.train()
    start, seen, step, epoch = time.perf_counter(), 0, 0, 0
    budget = minutes * 60
    while time.perf_counter() - start < budget:
        for images, targets in loader:
            losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if epoch == 0 and step < warmup_iters:
                warmup.step()
            step += 1
            seen += len(images)
            elapsed = time.perf_counter() - start
            for milestone in (2 / 3, 8 / 9):
                if elapsed >= milestone * budget and not getattr(optimizer, f"_done_{milestone}", False):
                    setattr(optimizer, f"_done_{milestone}", True)
                    for g in optimizer.param_groups:
                        g["lr"] *= 0.1
            if elapsed >= budget:
                break
        epoch += 1
    return model, seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"training budget for each (default: the preset's max_minutes, else {DEFAULT_MINUTES:g})")
    parser.add_argument("--out", default="runs/bench_train")
    args = parser.parse_args()

    cfg = load_config(preset_path(args.preset))
    minutes = args.minutes or cfg.train.max_minutes or DEFAULT_MINUTES
    cfg = replace(cfg, output_dir=args.out, name="visiondoctor",
                  train=replace(cfg.train, max_minutes=minutes, epochs=UNBOUNDED_EPOCHS))
    data = load_detection_data(cfg)
    device = torch.device("cpu")

    started = time.perf_counter()
    run = train(DetectionTask(), cfg)
    demo_wall = time.perf_counter() - started
    history = [r for r in read_history(run.history) if r.get("split") == "train"]
    ours_rate = sum(float(r["images_per_s"]) for r in history) / max(1, len(history))
    ours_model, _, _ = load_run_model(run, device)

    ref_model, ref_rate = reference_loop(cfg, data, minutes, device)
    layout = "channels_last" if channels_last_enabled(cfg.train.channels_last, ref_model, device) else "contiguous"

    print(f"\nsame model ({cfg.model.name} @ {cfg.model.image_size}px), data, seed, {layout} memory layout, "
          f"{minutes:g} min training budget; "
          "visiondoctor's whole train command (data, training, evaluation, diagnosis, report) took "
          f"{demo_wall / 60:.1f} min")
    columns = ["", "reference loop", "visiondoctor", "ratio", "visiondoctor − reference [95 % interval]"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    held_out = {}
    for split, index in (("val", data.val), ("test", data.test)):
        predictions = {name: predict(model, index, data.category_map, device, cfg.train.batch_size,
                                     cfg.eval.score_threshold) for name, model in (("reference", ref_model),
                                                                                   ("visiondoctor", ours_model))}
        comparison = compare_predictions(to_coco_dict(index), predictions, keys=SCORED)
        held_out[split] = comparison.intervals["visiondoctor"]["map50"].value
        for label, *cells in side_by_side(comparison, "reference", "visiondoctor", SCORED):
            print("| " + " | ".join([f"{split} {label}", *cells]) + " |")
    print(f"| train images/s | {ref_rate:.1f} | {ours_rate:.1f} | {ours_rate / ref_rate:.2f} | |")
    print(f"\nmAP figures, per split: {comparison.describe()}.")
    verdict = "met" if min(held_out.values()) >= TARGET_MAP50 else "NOT met"
    print(f"target mAP@.5 >= {TARGET_MAP50} on both held-out splits: {verdict} "
          f"(val {held_out['val']:.3f}, test {held_out['test']:.3f})")


if __name__ == "__main__":
    main()
