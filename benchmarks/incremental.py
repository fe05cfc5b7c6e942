"""Class-incremental sketches: the incremental method beside naive fine-tuning, in one run.

Both methods share phase 0 (trained once, then reused) and get the same step budget in every
later phase; they differ only in what they train on and with (fine-tuning: the new phase's
images alone; replay+distill: plus an exemplar memory of old-class images and KL distillation
of the old-class RoI logits from the previous phase's model). Printed side by side: final
mAP@0.5 on all classes, on the old and new classes, forgetting (mean fall of each old class's
AP@0.5 since the phase that taught it), the base classes' AP@0.5 after phase 0 and at the end,
and the wall time of each method's later phases.

    python benchmarks/incremental.py                 # 24 classes in 4 phases (12 + 3 x 4, 18 instances each)
    python benchmarks/incremental.py --quick         # a smoke run (minutes)
    python benchmarks/incremental.py --methods finetune replay distill replay+distill   # ablation

Sized for about 15 minutes on 2 otherwise idle CPU cores (resnet18 trunk from scratch, 128-px
images; OMP_NUM_THREADS=1 recommended); --backbone mobilenet_v3_small is ~3x cheaper per step but
learns the base classes far worse in this budget.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visiondoctor.config import load_config  # noqa: E402
from visiondoctor.incremental.task import IncrementalOptions, run_phases  # noqa: E402


def _fmt(v: float | None) -> str:
    return "   n/a" if v is None else f"{v:6.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="", help="where data and runs go (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="tiny budget: checks the pipeline, not the numbers")
    p.add_argument("--methods", nargs="+", default=["finetune", "replay+distill"])
    p.add_argument("--base-epochs", type=int, default=12)
    p.add_argument("--phase-steps", type=int, default=120)
    p.add_argument("--memory-per-class", type=int, default=3)
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "mobilenet_v3_small"])
    p.add_argument("--base-run", default="", help="reuse phase 0 of this run directory (same settings) for every method")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("visiondoctor.incremental").setLevel(logging.INFO)

    synth = "{}"
    base_epochs, phase_steps = args.base_epochs, args.phase_steps
    if args.quick:
        synth = ("{classes: [circle, square, triangle, star, house, tree, sun, cloud, fish, smiley], "
                 "phase_sizes: [4, 2, 2, 2], instances_per_class: [12, 8, 8, 8], num_val: 8, num_test: 24}")
        base_epochs, phase_steps = 3, 8
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vd_incremental_"))
    common = [f"output_dir={out}", "data.synth=sketches", f"data.synth_options={synth}",
              "model.name=two_stage_rcnn", "model.image_size=128",
              f"model.kwargs={{backbone: {args.backbone}}}",
              f"train.epochs={base_epochs}", "train.batch_size=8", "train.optimizer=adamw", "train.lr=0.001",
              "train.weight_decay=0.05", "train.warmup_steps=50", f"train.device={args.device}",
              f"train.seed={args.seed}", "train.monitors=false", "eval.split=test", "eval.score_threshold=0.01"]
    print(f"data and runs under {out}")
    rows, base_run = [], args.base_run
    for method in args.methods:
        cfg = load_config(None, common + [f"name={method.replace('+', '_')}"])
        options = IncrementalOptions(phase_steps=phase_steps, memory_per_class=args.memory_per_class, reuse_base=base_run)
        started = time.perf_counter()
        results = run_phases(cfg, None, method, options)
        elapsed = time.perf_counter() - started
        base_run = base_run or str(cfg.run_path)
        rows.append((method, results, elapsed))

    final = {m: r["final"] for m, r, _ in rows}
    print()
    print(f"{'method':<16}{'mAP50 all':>10}{'old':>8}{'new':>8}{'forgetting':>12}{'base AP50 p0 -> end':>22}{'time s':>9}")
    for method, results, elapsed in rows:
        f = results["final"]
        print(f"{method:<16}{_fmt(f['map50_all']):>10}{_fmt(f['map50_old']):>8}{_fmt(f['map50_new']):>8}"
              f"{_fmt(f['forgetting_ap50']):>12}{_fmt(f['base_classes_ap50_after_phase_0']):>14} ->{_fmt(f['base_classes_ap50_now'])}"
              f"{elapsed:9.0f}")
    print("\nper phase (mAP50 old / new / all):")
    for method, results, _ in rows:
        cells = [f"p{e['phase']}: {_fmt(e['map50']['old']).strip()} / {_fmt(e['map50']['new']).strip()} / "
                 f"{_fmt(e['map50']['all']).strip()}" for e in results["phases"]]
        print(f"  {method:<16}" + "   ".join(cells))
    if "finetune" in final and len(final) > 1:
        ref = final["finetune"]
        for method, f in final.items():
            if method == "finetune" or f["forgetting_ap50"] is None or ref["forgetting_ap50"] is None:
                continue
            print(f"\n{method} vs finetune: forgetting {f['forgetting_ap50']:.3f} vs {ref['forgetting_ap50']:.3f} "
                  f"({ref['forgetting_ap50'] - f['forgetting_ap50']:+.3f} AP50 less forgotten); final mAP50 "
                  f"{f['map50_all'] or 0:.3f} vs {ref['map50_all'] or 0:.3f} "
                  f"(ratio {(f['map50_all'] or 0) / max(ref['map50_all'] or 0, 1e-9):.2f})")
    print("(phase 0 is trained once, by the first method unless --base-run; a method that reuses it is timed on its later phases only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
