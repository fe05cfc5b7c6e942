"""The default recipe on real data (the BCCD blood-cell export beside this repository), with and without the
prior fit: same seed, same CPU budget, from scratch (pretrained off, so both are offline and comparable), then
both evaluated on the held-out splits. Prints mAP, mAP@.5, training images/s and the priors' best possible
recall (BPR) before and after the fit, side by side, and writes them to <out>/real_data.json.

    python benchmarks/real_data.py --minutes 5 [--image-size 320] [--data ../shared/datasets/bccd]

The validation split picks the best checkpoint, so the test split is the one neither run has seen.
Each run's folder under --out is replaced (a benchmark must not mix with an older run of itself).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visiondoctor.config import load_config  # noqa: E402
from visiondoctor.doctor.from_run import read_history  # noqa: E402
from visiondoctor.tasks.pipeline import evaluate_run, task_for, train  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "bccd"
VARIANTS = {"priors fitted": "true", "priors as built": "false"}  # model.auto_priors


def run_variant(name: str, auto_priors: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train the default recipe for the budget, evaluate on val (training does) and test; collect the figures."""
    out = Path(args.out)
    shutil.rmtree(out / name, ignore_errors=True)
    cfg = load_config(None, [f"data.path={args.data}", f"model.image_size={args.image_size}",
                             "model.pretrained=false", "model.pretrained_backbone=false",
                             f"model.auto_priors={auto_priors}", f"train.max_minutes={args.minutes}",
                             "train.epochs=100000", f"train.seed={args.seed}", "train.device=cpu",
                             f"output_dir={out}", f"name={name}"])
    run = train(task_for(cfg), cfg, exist_ok=True).path
    splits = {"val": json.loads((run / "metrics.json").read_text())}
    if (Path(args.data) / "test").exists():
        splits["test"] = evaluate_run(run, "test")
    priors = json.loads((run / "priors.json").read_text())
    history = [r for r in (read_history(run / "history.csv") or []) if r.get("split") == "train"]
    speeds = [r["images_per_s"] for r in history if isinstance(r.get("images_per_s"), float)]
    result = json.loads((run / "train_result.json").read_text())
    return {"run": str(run), "steps": result["steps"], "epochs": result["epochs"],
            "images_per_s": round(sum(speeds) / len(speeds), 2) if speeds else None,
            "bpr_before": priors.get("bpr_before"), "bpr_after": priors.get("bpr_after"),
            "positives_per_box": [g.get("positives_per_box_after") for g in priors.get("generators", [])],
            "priors_note": priors.get("note"),
            **{f"{split}_{key}": m.get(key) for split, m in splits.items() for key in ("map", "map50")}}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return "-" if value is None else str(value)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    names = list(results)
    rows = ["bpr_before", "bpr_after", "positives_per_box", "steps", "epochs", "images_per_s",
            "val_map", "val_map50", "test_map", "test_map50"]
    width = max(len(n) for n in names) + 2
    print(f"{'':22s}" + "".join(f"{n:>{width}s}" for n in names))
    for row in rows:
        print(f"{row:22s}" + "".join(f"{_cell(results[n].get(row)):>{width}s}" for n in names))
    for n in names:
        print(f"{n}: {results[n]['priors_note']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per run (wall clock, CPU)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--image-size", dest="image_size", type=int, default=320, help="the default recipe's 320")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "runs" / "real_data"))
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"{args.data}: no such dataset (the BCCD export is expected beside the repository)")
    results = {name: run_variant(name.replace(" ", "_"), flag, args) for name, flag in VARIANTS.items()}
    print_table(results)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "real_data.json").write_text(json.dumps({"minutes": args.minutes, "image_size": args.image_size,
                                                               "seed": args.seed, "data": args.data,
                                                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
