"""What the default training monitors add to step time: the same training run with and without
them, in one process (ssdlite320_mobilenet_v3_large at 320 px, batch 4, the engine's Trainer).

Three numbers, side by side:
  A/B      median step time with the monitor / without, the monitor switched on every other step of
           one run (paired, so slow drifts of a shared machine cancel; still noisy under load)
  direct   time spent inside the monitor's hooks / step time (precise; the cheap per-step cost)
  periodic one costly check (an eval forward on the batch + the matchers' statistics) amortised over
           the default period of 100 steps
The target is < 3 % for direct + periodic.

    python benchmarks/doctor_overhead.py [--steps 24] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visiondoctor.doctor.model_io import ModelIO  # noqa: E402
from visiondoctor.doctor.monitor import TrainingMonitor  # noqa: E402
from visiondoctor.doctor.training import train_briefly  # noqa: E402
from visiondoctor.doctor.zoo.common import ListDataset, batch, squares  # noqa: E402
from visiondoctor.engine.callbacks import Callback, TrainState  # noqa: E402

TARGET = 0.03


class AlternatingMonitor(Callback):
    """Runs the TrainingMonitor's hooks on every other step (paired comparison within one run) and
    times each step from the first callback of before_step to the last of after_step."""

    def __init__(self, monitor: TrainingMonitor) -> None:
        self.monitor = monitor
        self.inside = 0.0
        self.step_times: dict[bool, list[float]] = {True: [], False: []}
        self._start = 0.0
        self._on = False

    def on_train_start(self, state: TrainState) -> None:
        self.monitor.on_train_start(state)

    def before_step(self, state: TrainState) -> None:
        self._start = time.perf_counter()
        self._on = state.step % 2 == 1
        if self._on:
            self.monitor.before_step(state)

    def after_step(self, state: TrainState) -> None:
        if self._on:
            t = time.perf_counter()
            self.monitor.after_step(state)
            self.inside += time.perf_counter() - t
        if state.step > 2:  # the first steps carry one-off costs
            self.step_times[self._on].append(time.perf_counter() - self._start)

    def on_train_end(self, state: TrainState) -> None:
        self.monitor.on_train_end(state)


def model():
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="training steps (half with the monitor)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = ListDataset(squares(4 * args.steps, size=320, min_side=24, max_side=120, max_objects=3, classes=3))

    m = model()
    probe = AlternatingMonitor(TrainingMonitor(m))
    train_briefly(m, data, ModelIO(), args.steps, batch_size=4, lr=1e-3, callbacks=[probe])
    on, off = probe.step_times[True], probe.step_times[False]
    step_s = statistics.median(off)
    direct = probe.inside / max(1, len(on)) / step_s

    # the costly periodic check, measured on its own
    monitor = TrainingMonitor(m)
    monitor.attach(m)
    images, targets = batch([data[i] for i in range(4)])
    costs = []
    for _ in range(3):
        start = time.perf_counter()
        monitor.measure_outputs(100, images, targets)
        costs.append(time.perf_counter() - start)
    monitor.detach()
    periodic = statistics.median(costs) / (monitor.every * step_s)

    print(f"ssdlite320_mobilenet_v3_large, 320 px, batch 4, {args.threads} thread(s), {args.steps} steps alternating")
    print(f"{'':30s} {'without':>10s} {'with':>10s} {'ratio':>8s}")
    print(f"{'step time (median), s':30s} {step_s:10.3f} {statistics.median(on):10.3f} "
          f"{statistics.median(on) / step_s:8.3f}   (paired A/B, {len(off)} + {len(on)} steps)")
    print(f"{'monitor hooks per step':30s} {'':10s} {probe.inside / max(1, len(on)) * 1000:9.2f}ms {direct:8.2%}   (direct)")
    print(f"{'periodic check, every ' + str(monitor.every):30s} {'':10s} {statistics.median(costs) * 1000:9.0f}ms "
          f"{periodic:8.2%}   (amortised)")
    total = direct + periodic
    print(f"\nmonitor overhead (direct + periodic): {total:.2%} of step time -> {'within' if total < TARGET else 'ABOVE'} "
          f"the {TARGET:.0%} target")

if __name__ == "__main__":
    main()
