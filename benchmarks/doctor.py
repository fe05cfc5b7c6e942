"""The doctor on two zoos, reported apart, and its time to a first verdict — in one run.

1. The public bug zoo (visiondoctor/doctor/zoo: the seeds' failures beside healthy twins, built with the project).
2. The user-model zoo (tests/user_models: models written in other styles, each fault written down in
   manifest.yaml before the checks were tuned), through `diagnose` with the default budget and the
   default training configuration (plus each entry's own overrides, e.g. a learning rate).

For each zoo: faults named by their cause, faults seen only through a symptom, misses, errors and
warnings raised on the healthy models, and the median time to the first verdict (the first
diagnosis written). Then `visiondoctor diagnose` on torchvision's SSDLite-320 (an SSDLite-sized
model) on the shapes data: the seconds until diagnosis.json holds the static and probe verdicts,
before the monitored training starts.

    python benchmarks/doctor.py [--only NAME ...] [--no-public] [--no-user] [--no-ssdlite] [--threads 2]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "user_models"))

from run_zoo import load_manifest, run_entry, verdict  # noqa: E402

from visiondoctor import api  # noqa: E402
from visiondoctor.doctor.zoo import ZOO, evaluate_case  # noqa: E402

BUDGET_S = 60.0  # the target: static and probe verdicts of an SSDLite-sized model within a minute on 2 cores


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def public_zoo(names: list[str]) -> None:
    print(f"\n== public bug zoo ({len(names)} cases: the seeds' failures, each beside a healthy twin)")
    print(f"{'case':22s} {'expected finding (cause)':32s} {'broken':10s} {'twin errors':11s} {'twin warnings':13s} {'s':>5s}")
    named = errors = warnings = 0
    seconds = []
    for name in names:
        out = evaluate_case(name)
        hit = out.detected
        named += hit is not None
        twin_e = sum(f.severity == "error" for f in out.healthy)
        twin_w = sum(f.severity == "warning" for f in out.healthy)
        errors, warnings = errors + twin_e, warnings + twin_w
        seconds.append(out.seconds / 2)  # broken and twin each
        print(f"{name:22s} {out.case.expected_id:32s} {('named (' + hit.severity[0] + ')') if hit else 'MISSED':10s} "
              f"{twin_e:<11d} {twin_w:<13d} {out.seconds:5.1f}")
    n = len(names)
    print(f"named by cause {named}/{n} ({named / n:.0%}), seen only through a symptom 0, missed {n - named}; "
          f"healthy twins: {errors} errors, {warnings} warnings; median time to the verdict {_median(seconds):.1f} s")


def user_zoo(only: list[str] | None) -> None:
    entries = [e for e in load_manifest() if not only or e["name"] in only]
    broken = [e for e in entries if not e["healthy"]]
    print(f"\n== user-model zoo ({len(broken)} broken, {len(entries) - len(broken)} healthy; tests/user_models/manifest.yaml)")
    print(f"{'model':28s} {'verdict':16s} {'first verdict s':>15s} {'total s':>8s}  raised (error/warning)")
    verdicts, first_times, healthy_e, healthy_w = {}, [], 0, 0
    for entry in entries:
        start = time.perf_counter()
        first: list[float] = []

        def on_update(stage: str, findings: list, first: list[float] = first) -> None:
            if not first:
                first.append(time.perf_counter() - start)

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            findings = run_entry(entry, on_update=on_update)
        total = time.perf_counter() - start
        v = verdict(entry, findings)
        verdicts[entry["name"]] = v
        if first:
            first_times.append(first[0])
        if entry["healthy"]:
            healthy_e += sum(f.severity == "error" for f in findings)
            healthy_w += sum(f.severity == "warning" for f in findings)
        raised = ", ".join(f"{f.id}({f.severity[0]})" for f in findings if f.severity in ("error", "warning")) or "-"
        print(f"{entry['name']:28s} {v:16s} {first[0] if first else float('nan'):15.1f} {total:8.1f}  {raised}", flush=True)
    b = [verdicts[e["name"]] for e in broken]
    n = len(b)
    print(f"broken: named by cause {b.count('cause')}/{n} ({b.count('cause') / max(1, n):.0%}), seen only through a "
          f"symptom {b.count('symptom')}, missed {b.count('missed')}, doctor crashed {b.count('doctor crashed')}")
    print(f"healthy: {healthy_e} errors, {healthy_w} warnings across {len(entries) - n} models; median time to the first "
          f"verdict {_median(first_times):.1f} s   (targets: >= 90 % named by cause, 0 errors, <= 1 warning)")


def ssdlite_first_verdict() -> None:
    """`visiondoctor diagnose` on ssdlite320_mobilenet_v3_large at 320 px, the shapes data (generated)."""
    with tempfile.TemporaryDirectory(prefix="vd-doctor-bench-") as tmp:
        start = time.perf_counter()
        stages: dict[str, float] = {}  # stage -> seconds at its first write of diagnosis.json (insertion order)
        out = Path(tmp) / "diagnosis"
        overrides = ["model.name=ssdlite320_mobilenet_v3_large", "model.image_size=320", "model.pretrained=false",
                     "model.pretrained_backbone=false", "data.synth=shapes", "data.synth_images=32",
                     "data.synth_options={num_val: 16, num_test: 8, image_size: 160}", f"output_dir={tmp}"]

        def on_update(stage: str, findings: list) -> None:
            if (out / "diagnosis.json").exists():
                stages.setdefault(stage, time.perf_counter() - start)

        with contextlib.redirect_stdout(io.StringIO()):
            findings = api.diagnose(None, overrides=overrides, out=out, steps=100, on_update=on_update)
        total = time.perf_counter() - start
    print(f"\n== diagnose on ssdlite320_mobilenet_v3_large at 320 px ({torch.get_num_threads()} CPU threads)")
    first = next(iter(stages.values()), float("nan"))
    print(f"static + probe verdicts in diagnosis.json after {first:.1f} s "
          f"(target < {BUDGET_S:.0f} s; includes generating the data); whole diagnose {total:.0f} s")
    print("diagnosis.json rewritten after each stage: " + ", ".join(f"{s} {t:.1f} s" for s, t in stages.items()))
    for f in findings:
        if f.severity != "info":
            print(f"  {f.severity:7s} {f.id:30s} {f.title[:90]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="user-zoo entries / public cases to run (default: all)")
    parser.add_argument("--no-public", action="store_true")
    parser.add_argument("--no-user", action="store_true")
    parser.add_argument("--no-ssdlite", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the targets are for 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.no_public:
        public_zoo([n for n in sorted(ZOO) if not args.only or n in args.only])
    if not args.no_user:
        user_zoo(args.only)
    if not args.no_ssdlite:
        ssdlite_first_verdict()


if __name__ == "__main__":
    main()
