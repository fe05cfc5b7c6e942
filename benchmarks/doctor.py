"""The doctor's recall and false alarms on the bug zoo, and the time of the static + probe checks on
torchvision's ssdlite320_mobilenet_v3_large at 320 px — in one run.

For each zoo case: is the expected finding raised on the broken version (at error or warning)?
does the healthy twin raise any error, or the case's own finding (a false alarm)?

    python benchmarks/doctor.py [--cases NAME ...] [--no-ssdlite] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visiondoctor.doctor.static import static_checks  # noqa: E402
from visiondoctor.doctor.zoo import ZOO, evaluate_case  # noqa: E402
from visiondoctor.doctor.zoo.common import batch, squares  # noqa: E402

STATIC_BUDGET_S = 60.0  # the target for ssdlite320 at 320 on a 2-core CPU


def zoo_table(names: list[str]) -> tuple[int, int, int]:
    print(f"{'case':22s} {'seed':4s} {'expected finding':30s} {'broken: raised':22s} {'twin: errors':12s} "
          f"{'twin: same id':13s} {'time':>6s}")
    detected = twin_errors = twin_false = 0
    for name in names:
        out = evaluate_case(name)
        hit = out.detected
        detected += hit is not None
        twin_errors += bool(out.twin_errors)
        twin_false += bool(out.twin_expected)
        print(f"{name:22s} {out.case.seed:4s} {out.case.expected_id:30s} "
              f"{('yes (' + hit.severity + ')') if hit else 'NO':22s} {len(out.twin_errors):<12d} "
              f"{len(out.twin_expected):<13d} {out.seconds:5.1f}s")
        if hit:
            print(f"{'':27s}-> {hit.title[:110]}")
    n = len(names)
    print(f"\nrecall (broken cases flagged with their ID): {detected}/{n} = {detected / n:.0%}")
    print(f"healthy twins with an error-level finding:   {twin_errors}/{n}")
    print(f"healthy twins flagged with the case's ID:     {twin_false}/{n}  (false-alarm rate {twin_false / n:.0%})")
    return detected, twin_errors, twin_false


def ssdlite_static(threads: int) -> float:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
    images, targets = batch(squares(4, size=320, min_side=16, max_side=120, max_objects=3, classes=3))
    start = time.perf_counter()
    findings, _ = static_checks(model, images, targets, num_classes=4)
    seconds = time.perf_counter() - start
    print(f"\nstatic + probe checks, ssdlite320_mobilenet_v3_large at 320 px, 4 images, {threads} CPU thread(s): "
          f"{seconds:.1f} s   (target < {STATIC_BUDGET_S:.0f} s; ratio {seconds / STATIC_BUDGET_S:.2f} of the budget)")
    for f in findings:
        print(f"  {f.severity:7s} {f.id:30s} {f.title[:90]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=None, help="zoo cases (default: all)")
    parser.add_argument("--no-ssdlite", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for ssdlite (the target is for 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the zoo's models are tiny: one thread is fastest, and kind to a shared machine
    zoo_table(args.cases or sorted(ZOO))
    if not args.no_ssdlite:
        torch.set_num_threads(args.threads)
        ssdlite_static(args.threads)


if __name__ == "__main__":
    main()
