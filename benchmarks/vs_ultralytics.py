"""visiondoctor's default recipe against Ultralytics YOLO, side by side, from one run: at equal
wall-clock CPU budget and at equal epochs, on the demo's shapes data and on BCCD (real images, small
touching cells), both scored by visiondoctor's evaluation on the same held-out splits.

    python benchmarks/vs_ultralytics.py                       # everything: shapes + bccd, time + epochs
    python benchmarks/vs_ultralytics.py --datasets bccd --modes time --minutes 9
    python benchmarks/vs_ultralytics.py --ours-config demo    # our demo recipe instead of the defaults
    python benchmarks/vs_ultralytics.py --datasets shapes --modes time --ours-set model.auto_priors=false \
        --theirs-from runs/_bench_vs_ultralytics               # a change of ours against an earlier run's theirs

Install the Ultralytics side first. Ultralytics is AGPL-3.0: it lives in its own environment and is
never a dependency of visiondoctor (nothing in the package imports it; its side runs as a separate
process, benchmarks/ultralytics_side.py, whose docstring lists every fairness decision):

    python3 -m venv /work/ulvenv
    /work/ulvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/ulvenv/bin/pip install ultralytics==8.4.190 onnx==1.23.2 onnxruntime==1.32.0 onnxslim==0.1.98

(`--ultralytics-python` names another interpreter that has them.)

What each side does:
- Data: written once in Ultralytics' YOLO layout by visiondoctor's own converter (`convert_to_yolo`,
  what `visiondoctor data convert --to yolo` runs: write_yolo per split with the training split's
  classes, Roboflow's `valid` as `val`). Ultralytics trains on that copy (hard links to the same
  image files); visiondoctor reads the original dataset. Each split's ground truth is the
  converter's `gt_<split>.coco.json` (the original image and category ids), and both sides'
  predictions are COCO results on it. Shapes: the demo preset's data settings (3000 / 250 / 250
  images on 160-px canvases, seed 0), seen at 320 px; BCCD: ../shared/datasets/bccd (210 / 20 /
  10 images of 416 px), seen at 416 px.
- Ultralytics: `yolo26n.yaml` from scratch with its default training recipe (ultralytics_side.py).
- visiondoctor: what `visiondoctor train --data X --image-size S` does, in-process through
  `pipeline.train(pipeline.task_for(cfg), cfg)`: the default model, recipe and evaluation, from
  scratch (model.pretrained and pretrained_backbone off: nothing can be downloaded here, and the
  other side starts from random weights too). `--ours-config` / `--ours-set` change that.
- Budgets: `time` gives both `--minutes` of training (Ultralytics' `time=`, our
  `train.max_minutes` with the epoch count lifted so time alone stops it; each clock starts at
  the first epoch, set-up excluded); `epochs` gives both the same number of passes over the
  training images (`--epochs`, default per dataset: shapes 5, bccd 30). Validation during
  training is off on both sides (Ultralytics `val=False`, our `train.eval_every` past the last
  epoch): it would spend budget time on checkpoint selection, and both are scored afterwards on
  the same splits. `--val` gives both their per-epoch default back (best checkpoint on val).
- Threads: both train, predict and are timed with `--threads` torch threads (default 2, the
  development machine's cores), one after the other, never concurrently.
- Scores: visiondoctor.evaluation.coco (faster-coco-eval) on the whole val and test splits:
  mAP@[.5:.95], mAP@.5, mAP small, each with its 95 % bootstrap interval over the split's images
  (visiondoctor.evaluation.bootstrap: 1000 resamples, seed 0) and the paired test of
  ours - theirs (significant when the interval of the difference excludes 0). Our predictions
  use our evaluation's defaults (score >= 0.05, the model's own detections cap); Ultralytics'
  its validation defaults (conf 0.001, max_det 100, NMS IoU 0.7).
- Training speed: images / seconds inside the training loops (data loading, forward, backward,
  optimizer; not validation, checkpoint saving or set-up) for both.
- Inference: batch 1, `--threads`, on the first image of the first scored split, median of
  `--repeats` runs after 3 warm-ups, eager PyTorch and ONNX Runtime timed interleaved; from the
  preprocessed float tensor (the model's input size) to the final boxes, NMS included. Ours:
  visiondoctor.tasks.speed.measure_runtimes (ONNX graph from visiondoctor.tasks.export, which holds
  resize, normalisation, network, decoding and NMS); theirs: ultralytics_side.py (its own ONNX
  export, NMS by its predictor's postprocess).
- Parameters: ours as trained and deployed (one model); theirs as trained (YOLO26 trains a second,
  one-to-one head) and as deployed (fused, that head removed).

Duration (2-core CPU): the time mode is 2 x --minutes of training per dataset plus set-up,
prediction and timing (a few minutes); the epochs mode on shapes is dominated by Ultralytics at
~10 images/s (the hand measurement of issue 16, YOLO11n at 320 px): 5 epochs x 3000 images is
~25 minutes for that side alone. The defaults run everything: budget about two hours.

Printed: one table per dataset and budget, theirs | ours | ours/theirs | ours - theirs with its
interval; everything also lands in OUT/result.json. Smoke-test with tiny budgets, e.g.
`--minutes 0.1 --epochs 1 --shapes-sizes 48,16,16 --repeats 3`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visiondoctor.cli import convert_to_yolo  # noqa: E402
from visiondoctor.config import Config, load_config  # noqa: E402
from visiondoctor.data.images import load_rgb  # noqa: E402
from visiondoctor.data.synth import ensure_synthetic  # noqa: E402
from visiondoctor.doctor.from_run import read_history  # noqa: E402
from visiondoctor.evaluation.bootstrap import METRIC_LABELS, compare_predictions, side_by_side  # noqa: E402
from visiondoctor.evaluation.latency import torch_threads  # noqa: E402
from visiondoctor.tasks.detection import predict  # noqa: E402
from visiondoctor.tasks.pipeline import load_run_model, run_task, task_for, train  # noqa: E402
from visiondoctor.tasks.speed import measure_runtimes  # noqa: E402

ULTRALYTICS_PYTHON = "/work/ulvenv/bin/python"
SIDE_SCRIPT = Path(__file__).with_name("ultralytics_side.py")
# ../shared/datasets/bccd beside the checkout (one level further up from a worktree under ../wt/)
BCCD = next((bccd for bccd in (p / "shared" / "datasets" / "bccd" for p in ROOT.parents[:2]) if bccd.is_dir()),
            ROOT.parent / "shared" / "datasets" / "bccd")
SIDE_PACKAGES = ("ultralytics", "onnx", "onnxruntime", "onnxslim")
SCORED = ("map", "map50", "map_small")
UNBOUNDED_EPOCHS = 100_000  # with a time budget: time, not the epoch count, stops our run
NO_VALIDATION = 1_000_000  # train.eval_every beyond any epoch: validated once, after the last epoch
INSTALL_HINT = f"""Ultralytics' side needs its own environment (AGPL-3.0, never a dependency of visiondoctor):
    python3 -m venv /work/ulvenv
    /work/ulvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/ulvenv/bin/pip install ultralytics==8.4.190 onnx==1.23.2 onnxruntime==1.32.0 onnxslim==0.1.98
then rerun, or pass --ultralytics-python PATH (default {ULTRALYTICS_PYTHON})."""


@dataclass(frozen=True)
class Dataset:
    name: str
    image_size: int
    epochs: int  # the equal-epoch budget unless --epochs
    held_out: tuple[str, ...] = ("val", "test")


DATASETS = {"shapes": Dataset("shapes", 320, 5), "bccd": Dataset("bccd", 416, 30)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="shapes,bccd", help=f"comma-separated, of {', '.join(DATASETS)}")
    ap.add_argument("--modes", default="time,epochs", help="time (equal wall-clock budget), epochs (equal epochs)")
    ap.add_argument("--minutes", type=float, default=9.0, help="training budget of each side in the time mode")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of each side in the epochs mode "
                    f"(default per dataset: {', '.join(f'{d.name} {d.epochs}' for d in DATASETS.values())})")
    ap.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads of both sides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val", action="store_true", help="per-epoch validation on both sides (inside the budget)")
    ap.add_argument("--repeats", type=int, default=20, help="timed inference runs per runtime")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the evaluation images")
    ap.add_argument("--bccd", default=str(BCCD), help="the BCCD COCO export (train/ valid/ test/)")
    ap.add_argument("--shapes-sizes", default=None, metavar="TRAIN,VAL,TEST",
                    help="shapes images per split (default: the demo preset's); small values for a smoke test")
    ap.add_argument("--ours-config", default=None, help="a config or preset for our side (default: the defaults)")
    ap.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE", help="override on our side")
    ap.add_argument("--theirs-from", default=None, metavar="OUT",
                    help="reuse Ultralytics' side of an earlier run's OUT (its predictions and figures) instead of "
                         "training it again: to measure a change on our side against the same reference")
    ap.add_argument("--ultralytics-python", default=ULTRALYTICS_PYTHON)
    ap.add_argument("--ultralytics-model", default=None, help="model yaml for Ultralytics' side (default yolo26n.yaml)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "_bench_vs_ultralytics"))
    args = ap.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [d for d in args.datasets if d not in DATASETS] + [m for m in args.modes if m not in ("time", "epochs")]
    if unknown:
        ap.error(f"unknown dataset(s) or mode(s): {unknown}")
    return args


def check_ultralytics(python: str) -> None:
    """Exit with the install hint when the Ultralytics environment is missing."""
    if not Path(python).exists():
        raise SystemExit(f"{python}: not found.\n{INSTALL_HINT}")
    code = f"import importlib.util as u; print(*[m for m in {SIDE_PACKAGES!r} if not u.find_spec(m)])"
    missing = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if missing.returncode != 0 or missing.stdout.strip():
        raise SystemExit(f"{python}: missing {missing.stdout.strip() or missing.stderr.strip()}.\n{INSTALL_HINT}")


# ----- data ---------------------------------------------------------------------------------------
def prepare_data(name: str, args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """(the dataset our side reads, its YOLO copy for Ultralytics' side), written by our converter."""
    source = shapes_root(args, out) if name == "shapes" else Path(args.bccd)
    yolo = out / name / "yolo"
    shutil.rmtree(yolo, ignore_errors=True)  # write_yolo refuses to mix with an earlier copy
    for w in convert_to_yolo(source, "auto", None, yolo):
        print(f"{name}: {w.split} {w.images} images, {w.boxes} boxes -> {w.images_dir}")
    return source, yolo


def shapes_root(args: argparse.Namespace, out: Path) -> Path:
    """The demo preset's shapes data (generated once under OUT/_data), or smaller with --shapes-sizes."""
    overrides = [f"output_dir={out}", f"train.seed={args.seed}"]
    if args.shapes_sizes:
        n_train, n_val, n_test = (int(v) for v in args.shapes_sizes.split(","))
        demo = load_config("demo").data.synth_options
        options = {**demo, "num_val": n_val, "num_test": n_test}
        overrides += [f"data.synth_images={n_train}", f"data.synth_options={json.dumps(options)}"]
    return ensure_synthetic(load_config("demo", overrides))


# ----- our side -----------------------------------------------------------------------------------
def our_config(source: Path, dataset: Dataset, mode: str, epochs: int, args: argparse.Namespace, out: Path) -> Config:
    """`visiondoctor train --data SOURCE --image-size S` (or --ours-config) from scratch, with the budget."""
    budget = ([f"train.max_minutes={args.minutes}", f"train.epochs={UNBOUNDED_EPOCHS}"] if mode == "time"
              else [f"train.epochs={epochs}", "train.max_minutes=0"])
    return load_config(args.ours_config, [
        f"data.path={source}", "data.synth=", f"model.image_size={dataset.image_size}", "model.pretrained=false",
        "model.pretrained_backbone=false", f"train.seed={args.seed}", "train.device=cpu", *budget,
        *([] if args.val else [f"train.eval_every={NO_VALIDATION}"]), f"output_dir={out}", "name=visiondoctor",
        *args.ours_set])


def training_rate(history: list[dict[str, Any]], batch_size: int) -> tuple[float, int, float]:
    """(images/s, images, seconds) inside the training loops, from history.csv's train rows: per
    epoch the steps it added x the batch, and the seconds its images/s figure implies."""
    images = seconds = 0.0
    last_step = 0
    for row in (r for r in history if r.get("split") == "train"):
        step, rate = int(float(row["step"])), float(row["images_per_s"])
        n = (step - last_step) * batch_size
        last_step = step
        if n and rate > 0:
            images, seconds = images + n, seconds + n / rate
    return (images / seconds if seconds else 0.0), int(images), seconds


def run_ours(source: Path, dataset: Dataset, mode: str, epochs: int, args: argparse.Namespace, out: Path,
             first_image: Path) -> dict[str, Any]:
    """Train, predict every held-out split (COCO results), time inference; the figures."""
    cfg = our_config(source, dataset, mode, epochs, args, out)
    with torch_threads(args.threads):
        started = time.perf_counter()
        run = train(task_for(cfg), cfg)
        call_s = time.perf_counter() - started
        task, cfg, categories = run_task(run)
        model, _, category_map = load_run_model(run, torch.device("cpu"))
        data = task.load_data(cfg, categories)
        predictions = {s: predict(model, data.split(s), category_map, torch.device("cpu"), cfg.train.batch_size,
                                  cfg.eval.score_threshold) for s in dataset.held_out}
    latency = measure_runtimes(model, cfg.model.image_size, ("pytorch", "onnxruntime"), runs=args.repeats, warmup=3,
                               image=load_rgb(first_image), threads=args.threads)
    result = run.read_json("train_result.json")
    rate, images, seconds = training_rate(read_history(run.history), cfg.train.batch_size)
    return {"model": cfg.model.name, "run": str(run.path), "predictions": predictions,
            "image_ids": {s: sorted(r.image_id for r in data.split(s).records) for s in dataset.held_out},
            "epochs": result["epochs"], "steps": result["steps"], "stopped_by": result["stopped_by"],
            "train_seconds": round(seconds, 1), "images_seen": images, "images_per_s": round(rate, 2),
            "train_call_seconds": round(call_s, 1), "params": latency["params"], "params_inference": latency["params"],
            "latency_ms": latency["latency_ms"], "latency_skipped": latency["skipped"]}


# ----- Ultralytics' side --------------------------------------------------------------------------
def run_theirs(yolo: Path, dataset: Dataset, mode: str, epochs: int, args: argparse.Namespace, out: Path
               ) -> dict[str, Any]:
    """ultralytics_side.py in its own environment; its result.json with the predictions loaded."""
    command = [args.ultralytics_python, str(SIDE_SCRIPT), "--data", str(yolo / "data.yaml"),
               "--imgsz", str(dataset.image_size), "--threads", str(args.threads), "--seed", str(args.seed),
               "--out", str(out), "--repeats", str(args.repeats),
               *(["--minutes", str(args.minutes)] if mode == "time" else ["--epochs", str(epochs)]),
               *(["--val"] if args.val else []),
               *(["--model", args.ultralytics_model] if args.ultralytics_model else []),
               *[f"--coco-gt={s}={yolo / f'gt_{s}.coco.json'}" for s in dataset.held_out]]
    print("$ " + " ".join(command), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of visiondoctor on its path
    done = subprocess.run(command, env=env)
    if done.returncode != 0:
        raise SystemExit(f"Ultralytics' side failed (exit {done.returncode}); its output is above")
    return read_theirs(out)


def read_theirs(out: Path) -> dict[str, Any]:
    """Ultralytics' side as ultralytics_side.py left it in `out` (result.json), predictions loaded."""
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    t = result["training"]
    return {"model": result["model"], "predictions": {s: json.loads(Path(p["file"]).read_text(encoding="utf-8"))
                                                      for s, p in result["predictions"].items()},
            "epochs": t["epochs_completed"], "steps": None, "train_seconds": t["train_seconds"],
            "images_seen": t["images_seen"], "images_per_s": t["images_per_s"],
            "train_call_seconds": t["train_call_seconds"], "params": result["params"],
            "params_inference": result["params_inference"], "latency_ms": result["latency"]["latency_ms"],
            "network_attempts": result["network_attempts"], "versions": result["versions"],
            "onnx_parity": result["latency"].get("onnx_parity")}


# ----- scoring and the table ------------------------------------------------------------------------
def score(yolo: Path, dataset: Dataset, ours: dict[str, Any], theirs: dict[str, Any], resamples: int, seed: int
          ) -> dict[str, Any]:
    """Both sides' predictions on each held-out split, by our evaluation with bootstrap intervals."""
    scored = {}
    for split in dataset.held_out:
        gt_file = yolo / f"gt_{split}.coco.json"
        gt = json.loads(gt_file.read_text(encoding="utf-8"))
        if sorted(im["id"] for im in gt["images"]) != ours["image_ids"][split]:
            raise SystemExit(f"{gt_file}: not the images our side predicted on for {split!r}")
        scored[split] = compare_predictions(gt, {"ultralytics": theirs["predictions"][split],
                                                 "visiondoctor": ours["predictions"][split]},
                                            keys=SCORED, resamples=resamples, seed=seed)
    return scored


def table(title: str, ours: dict[str, Any], theirs: dict[str, Any], scored: dict[str, Any]) -> str:
    """The side-by-side markdown table of one dataset and budget."""
    columns = ["", f"Ultralytics {theirs['model']}", f"visiondoctor {ours['model']}", "ours / theirs",
               "ours − theirs [95 % interval]"]
    rows = [[f"{split} {row[0]}", *row[1:]] for split, comparison in scored.items()
            for row in side_by_side(comparison, "ultralytics", "visiondoctor", SCORED)]

    def line(label: str, a: Any, b: Any, fmt: str = "{:.1f}") -> list[str]:
        ratio = f"{b / a:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "n/a"
        return [label, "n/a" if a is None else fmt.format(a), "n/a" if b is None else fmt.format(b), ratio, ""]

    rows.append(line("train images/s", theirs["images_per_s"], ours["images_per_s"]))
    rows.append(line("training loop seconds", theirs["train_seconds"], ours["train_seconds"], "{:.0f}"))
    rows.append(["epochs (steps)", str(theirs["epochs"]), f"{ours['epochs']} ({ours['steps']} steps)", "", ""])
    for runtime, label in (("pytorch", "eager PyTorch"), ("onnxruntime", "ONNX Runtime")):
        rows.append(line(f"inference ms/image, {label}", theirs["latency_ms"].get(runtime),
                         ours["latency_ms"].get(runtime)))
    rows.append(line("parameters [M] (as trained)", theirs["params"] / 1e6, ours["params"] / 1e6, "{:.2f}"))
    rows.append(line("parameters [M] (deployed)", theirs["params_inference"] / 1e6, ours["params_inference"] / 1e6,
                     "{:.2f}"))
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    first = next(iter(scored.values()))
    images = ", ".join(f"{split} {c.images}" for split, c in scored.items())
    lines += ["", f"mAP figures: {first.confidence * 100:g} % bootstrap intervals over each split's images ({images}; "
              f"{first.resamples} resamples, seed {first.seed}); a difference is significant when its paired interval "
              "excludes 0."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.theirs_from:
        check_ultralytics(args.ultralytics_python)
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    tables, results = [], {}
    for name in args.datasets:
        dataset = DATASETS[name]
        source, yolo = prepare_data(name, args, out)
        first_image = _first_image(yolo, dataset.held_out[0])
        for mode in args.modes:
            epochs = args.epochs or dataset.epochs
            where = out / name / mode
            theirs = (read_theirs(Path(args.theirs_from) / name / mode / "ultralytics") if args.theirs_from
                      else run_theirs(yolo, dataset, mode, epochs, args, where / "ultralytics"))
            ours = run_ours(source, dataset, mode, epochs, args, where, first_image)
            scored = score(yolo, dataset, ours, theirs, args.resamples, args.seed)
            budget = (f"equal wall-clock budget, {args.minutes:g} min of training each" if mode == "time"
                      else f"equal epochs, {epochs} each")
            title = f"{name} ({dataset.image_size} px), {budget}, {args.threads} CPU thread(s)"
            tables.append(table(title, ours, theirs, scored))
            print("\n" + tables[-1] + "\n", flush=True)
            results[f"{name}/{mode}"] = {"title": title, "scores": {s: c.to_dict() for s, c in scored.items()},
                                         **{side: {k: v for k, v in r.items() if k not in ("predictions", "image_ids")}
                                            for side, r in (("visiondoctor", ours), ("ultralytics", theirs))}}
    (out / "result.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=str),
                                     encoding="utf-8")
    print("\n\n".join(tables))
    print(f"\nmetric names: {', '.join(METRIC_LABELS[k] for k in SCORED)}; all figures -> {out / 'result.json'}")
    return 0


def _first_image(yolo: Path, split: str) -> Path:
    """The image both sides' latency is timed on: the first of the split's ground truth (the one
    ultralytics_side.py times)."""
    gt = json.loads((yolo / f"gt_{split}.coco.json").read_text(encoding="utf-8"))
    return yolo / "images" / split / gt["images"][0]["file_name"]


if __name__ == "__main__":
    sys.exit(main())
