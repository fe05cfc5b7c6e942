"""Ultralytics' side of benchmarks/vs_ultralytics.py: train a YOLO detector from scratch with
Ultralytics' default recipe, predict held-out splits as COCO results, time inference, count
parameters; everything lands in OUT/result.json.

Runs under its own environment, never visiondoctor's (Ultralytics is AGPL; nothing here imports
visiondoctor and nothing in visiondoctor imports this):

    /work/ulvenv/bin/python benchmarks/ultralytics_side.py --data YOLO/data.yaml --imgsz 320 \\
        --minutes 9 --threads 2 --out OUT --coco-gt val=YOLO/gt_val.coco.json --coco-gt test=YOLO/gt_test.coco.json

The environment it was written and smoke-tested with (the versions land in result.json):

    python3 -m venv /work/ulvenv
    /work/ulvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/ulvenv/bin/pip install ultralytics==8.4.190 onnx==1.23.2 onnxruntime==1.32.0 onnxslim==0.1.98

`--data` is a folder written by visiondoctor's `write_yolo`; its `gt_<split>.coco.json` files
are the ground truth both sides are scored against (by visiondoctor's evaluation, not here).

Decisions (see the report of issue 16 for the Ultralytics defaults they rest on):
- Model: `yolo26n.yaml` by default, built from its yaml (random weights, nothing downloaded):
  YOLO26 is the newest detector family in Ultralytics 8.4 and `n` its smallest size; it is
  also the model `YOLO()` loads when given none. It trains two heads (one-to-many and
  one-to-one); with Ultralytics' default `nms=None` its predictor, validator and ONNX export
  all use the one-to-many head + NMS (IoU 0.7). The NMS-free one-to-one head (`nms=False`) is
  not the default and is not used here.
- Recipe: Ultralytics' `train()` defaults, untouched (batch 16 with gradients accumulated to a
  nominal 64, optimizer=auto, warmup, linear lr decay, EMA, mosaic + close_mosaic=10, its
  loss and assigner, deterministic, seed). Only what running offline on a CPU needs is set:
  device=cpu, plots=False (plots need a downloaded font), project/name under OUT. On CPU
  Ultralytics forces workers=0 (data loading in the training process) whatever is asked.
- Offline: YOLO_OFFLINE=1 (no online check, hub, telemetry or update check), YOLO_AUTOINSTALL
  =false (no pip installs), YOLO_CONFIG_DIR in the temp folder (its settings file, with sync
  and every logger integration off), `check_font` replaced by a no-op (it sends an HTTP HEAD
  for Arial.ttf even offline, for plots that are off), and a socket guard that refuses and
  records any connection attempt (`network_attempts` in result.json; expected empty).
- Threads: Ultralytics sets torch to min(8, cores - 1) threads for CPU work; that constant is
  replaced by `--threads` so training, prediction and timing all use the same count.
- Validation: off during training by default (`val=False`): the benchmark scores both sides on
  the same held-out splits afterwards, so Ultralytics' per-epoch validation would only spend
  budget time (it runs inside its `time=` budget) on best.pt selection. Ultralytics still
  validates after the last epoch (it always does) and again on best.pt (`final_eval`), both
  after the budget (`validation_runs_seconds` lists every validation). `--val` restores the per-epoch default; then best.pt is the
  epoch with the best fitness (0.1 mAP50 + 0.9 mAP50-95 on `val`), as a user would get it.
  Either way the weights predicted are Ultralytics' `best.pt` (the last epoch when val=False).
- Budget: `--minutes M` passes `time=M/60`. Ultralytics' clock starts at its first epoch
  (setup excluded) and includes checkpoint saving and, with --val, validation. It is read
  after every optimizer step (every `accumulate` batches, up to 4), so training overshoots by
  up to that; the last epoch's validation and final_eval come after. The first epoch is
  planned for `epochs` (default 100, which is also what optimizer=auto decides from); after
  each epoch the count is re-estimated as ceil(budget / mean epoch time) and the linear lr
  schedule (lr0 -> lr0*lrf, stepped per epoch) and warmup (min(3, epochs-1) epochs) are
  rebuilt for it. close_mosaic follows the estimate: with fewer than ~11 epochs in the
  budget, mosaic is on in the first epoch only.
- Training speed: images/s = images passed to the model / seconds inside the training loops
  (from each epoch's start to its last batch: data loading, forward, backward, optimizer, EMA;
  not validation, checkpoint saving or setup).
- Predictions: Ultralytics' own predictor (letterbox with minimal padding, its postprocessing),
  batch 1, conf=0.001, max_det=100, NMS IoU 0.7 (its default), boxes in original-image pixels.
  Class index i -> the category of the ground truth whose name is the i-th name in data.yaml;
  images -> ground-truth ids by file name.
- Latency (batch 1, `--threads`, one image letterboxed to imgsz x imgsz, median of `--repeats`
  runs after 3 warmups, eager and ONNX Runtime interleaved): from the preprocessed float tensor
  (RGB, 0..1, 1x3xSxS) to the final detections in original-image pixels, i.e. the model forward
  (eager: the fused eval model its predictor ran; ONNX Runtime: Ultralytics' default ONNX export
  of the same head, CPU provider, intra-op threads = --threads, inter-op 1) plus the predictor's
  postprocess (NMS at conf 0.001 / IoU 0.7 / max_det 100, or the conf filter of an end-to-end
  head; box rescaling), without the Results wrapper. Not timed: image decoding, letterbox,
  uint8 -> float. `onnx_parity` checks the export against the eager model on that image.
"""
from __future__ import annotations

import os
import socket
import tempfile

# Ultralytics reads these when imported, so they are set before the imports below.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "ultralytics_side_config"))

NETWORK_ATTEMPTS: list[str] = []


def _refuse_network(*args: object, **kwargs: object) -> None:
    """Stands in for socket.getaddrinfo / create_connection: records the host, then fails as offline."""
    NETWORK_ATTEMPTS.append(str(args[0]) if args else "?")
    raise OSError("network disabled by ultralytics_side.py")


socket.getaddrinfo = _refuse_network  # type: ignore[assignment]
socket.create_connection = _refuse_network  # type: ignore[assignment]

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import ultralytics  # noqa: E402
import ultralytics.data.utils  # noqa: E402
import ultralytics.utils.torch_utils  # noqa: E402
from ultralytics import YOLO, settings  # noqa: E402
from ultralytics.data.augment import LetterBox  # noqa: E402
from ultralytics.data.utils import check_det_dataset  # noqa: E402
from ultralytics.utils import nms, ops  # noqa: E402
from ultralytics.utils.metrics import box_iou  # noqa: E402
from ultralytics.utils.patches import imread  # noqa: E402

DEFAULT_MODEL = "yolo26n.yaml"
CONF, MAX_DET, IOU = 0.001, 100, 0.7
VERSION_PACKAGES = ("ultralytics", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxslim", "opencv-python")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="data.yaml of a YOLO folder (visiondoctor's write_yolo)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a model yaml (built from scratch), e.g. yolo11n.yaml")
    ap.add_argument("--imgsz", type=int, default=320)
    budget = ap.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=int, help="train this many epochs")
    budget.add_argument("--minutes", type=float, help="train for this wall-clock budget (Ultralytics' time=)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    ap.add_argument("--val", action="store_true", help="Ultralytics' per-epoch validation inside the budget")
    ap.add_argument("--out", required=True)
    ap.add_argument("--predict-split", action="append", default=[], help="default: every --coco-gt split")
    ap.add_argument("--coco-gt", action="append", default=[], metavar="SPLIT=PATH", help="ground truth of a split")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per runtime")
    args = ap.parse_args(argv)
    args.coco_gt = dict(_split_path(item) for item in args.coco_gt)
    args.predict_split = args.predict_split or list(args.coco_gt)
    missing = [s for s in args.predict_split if s not in args.coco_gt]
    if missing:
        ap.error(f"--predict-split {missing} without --coco-gt {missing[0]}=PATH")
    return args


def _split_path(item: str) -> tuple[str, Path]:
    split, sep, path = item.partition("=")
    if not sep or not split or not path:
        raise SystemExit(f"--coco-gt {item!r}: expected SPLIT=PATH")
    return split, Path(path)


def configure_ultralytics(threads: int) -> None:
    """The offline / fixed-thread settings the module docstring lists (nothing of the recipe)."""
    settings.update({"sync": False, **dict.fromkeys(
        ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb"), False)})
    ultralytics.data.utils.check_font = lambda *args, **kwargs: None
    ultralytics.utils.torch_utils.NUM_THREADS = threads
    torch.set_num_threads(threads)


# ----- training -------------------------------------------------------------------------------
class TrainingClock:
    """Ultralytics callbacks that time the training loops apart from validation and saving, count
    the images fed to the model, and log each epoch's lr, estimated epoch count and mosaic."""

    def __init__(self) -> None:
        self.train_s = 0.0
        self.val_runs_s: list[float] = []
        self.images = 0
        self.epochs: list[dict[str, Any]] = []
        self.threads_seen: int | None = None
        self.loop_elapsed_s = 0.0  # Ultralytics' own clock (what time= is compared to) at the last epoch's end
        self._epoch_start = self._val_start = 0.0
        self._epoch_images = 0

    def attach(self, model: YOLO) -> None:
        for event, fn in (("on_pretrain_routine_end", self._count_batches), ("on_train_epoch_start", self._start),
                          ("on_train_epoch_end", self._end), ("on_val_start", self._val_begin),
                          ("on_val_end", self._val_end)):
            model.add_callback(event, fn)

    def _count_batches(self, trainer: Any) -> None:
        preprocess = trainer.preprocess_batch

        def counting(batch: dict) -> dict:
            self._epoch_images += int(batch["img"].shape[0])
            return preprocess(batch)

        trainer.preprocess_batch = counting

    def _start(self, trainer: Any) -> None:
        self.threads_seen = torch.get_num_threads()
        self._epoch_images = 0
        self._epoch_start = time.perf_counter()

    def _end(self, trainer: Any) -> None:
        seconds = time.perf_counter() - self._epoch_start
        self.train_s += seconds
        self.images += self._epoch_images
        self.loop_elapsed_s = time.time() - trainer.train_time_start
        self.epochs.append({"epoch": trainer.epoch + 1, "epochs_planned": trainer.epochs, "seconds": round(seconds, 2),
                            "images": self._epoch_images, "lr": [round(v, 7) for v in trainer.lr.values()],
                            "mosaic_p": _mosaic_probability(trainer.train_loader.dataset.transforms),
                            "loss": {k: round(float(v), 4) for k, v in (trainer.tloss or {}).items()}})

    def _val_begin(self, validator: Any) -> None:
        self._val_start = time.perf_counter()

    def _val_end(self, validator: Any) -> None:
        self.val_runs_s.append(round(time.perf_counter() - self._val_start, 2))


def _mosaic_probability(transform: Any) -> float | None:
    """p of the Mosaic transform inside Ultralytics' nested Compose, or None when there is none."""
    if type(transform).__name__ == "Mosaic":
        return float(transform.p)
    for child in getattr(transform, "transforms", None) or []:
        found = _mosaic_probability(child)
        if found is not None:
            return found
    return None


def train(args: argparse.Namespace, out: Path) -> tuple[Path, dict[str, Any]]:
    """Train with Ultralytics' defaults; the weights to predict with and the training figures."""
    torch.manual_seed(args.seed)
    model = YOLO(args.model)  # a yaml: built from scratch, random weights
    clock = TrainingClock()
    clock.attach(model)
    budget = {"time": args.minutes / 60.0} if args.minutes else {"epochs": args.epochs}
    started = time.perf_counter()
    model.train(data=str(args.data), imgsz=args.imgsz, device="cpu", seed=args.seed, val=args.val, plots=False,
                project=str(out), name="train", exist_ok=True, **budget)
    call_s = time.perf_counter() - started
    trainer = model.trainer
    weights = trainer.best if trainer.best.exists() else trainer.last
    figures = {
        "weights": str(weights),
        "epochs_completed": len(clock.epochs),
        "epochs_planned_last": trainer.epochs,
        "train_seconds": round(clock.train_s, 2),
        "images_seen": clock.images,
        "images_per_s": round(clock.images / max(clock.train_s, 1e-9), 2),
        # Every validation train() ran: per epoch with --val, the last epoch's, and final_eval on best.pt (last).
        "validation_runs_seconds": clock.val_runs_s,
        "train_call_seconds": round(call_s, 2),
        "budget_seconds": args.minutes * 60.0 if args.minutes else None,
        "ultralytics_clock_at_stop_seconds": round(clock.loop_elapsed_s, 2),
        "torch_threads_in_training": clock.threads_seen,
        "optimizer": str(trainer.args.optimizer),
        "lr0": float(trainer.args.lr0),
        "batch": int(trainer.batch_size),
        "accumulate": int(trainer.accumulate),
        "val_each_epoch": bool(args.val),
        "per_epoch": clock.epochs,
    }
    return weights, figures


# ----- predictions ----------------------------------------------------------------------------
def category_of_class(names: dict[int, str], gt: dict[str, Any], gt_path: Path) -> dict[int, int]:
    """YOLO class index -> ground-truth category id, by name (data.yaml order = write_yolo's order)."""
    by_name: dict[str, list[int]] = {}
    for c in gt["categories"]:
        by_name.setdefault(str(c["name"]), []).append(int(c["id"]))
    mapping = {}
    for index, name in names.items():
        ids = by_name.get(name, [])
        if len(ids) != 1:
            raise SystemExit(f"{gt_path}: class {index} {name!r} of data.yaml matches {len(ids)} categories "
                             f"(need exactly one) among {sorted(by_name)}")
        mapping[int(index)] = ids[0]
    return mapping


def image_paths(gt: dict[str, Any], image_dir: Path, gt_path: Path) -> dict[Path, int]:
    """Image file -> ground-truth image id, for every image of the ground truth."""
    paths = {}
    for image in gt["images"]:
        path = image_dir / image["file_name"]
        if not path.is_file():
            path = image_dir / Path(image["file_name"]).name
        if not path.is_file():
            raise SystemExit(f"{gt_path}: image id {image['id']} {image['file_name']!r} not found in {image_dir}")
        paths[path.resolve()] = int(image["id"])
    if not paths:
        raise SystemExit(f"{gt_path}: no images")
    return paths


def predict_split(model: YOLO, data: dict[str, Any], split: str, gt_path: Path, imgsz: int, out: Path
                  ) -> dict[str, Any]:
    """Predict every ground-truth image of `split`; write COCO results; per-image predictor times."""
    gt = json.loads(gt_path.read_text(encoding="utf-8"))
    if split not in data:
        has = [k for k in ("train", "val", "test") if k in data]
        raise SystemExit(f"{data['yaml_file']}: no split {split!r} (has {has})")
    categories = category_of_class(data["names"], gt, gt_path)
    paths = image_paths(gt, Path(data[split]), gt_path)
    results, speeds = [], []
    for r in model.predict(source=[str(p) for p in paths], imgsz=imgsz, conf=CONF, iou=IOU, max_det=MAX_DET,
                           device="cpu", batch=1, stream=True, verbose=False, save=False):
        image_id = paths[Path(r.path).resolve()]
        speeds.append(r.speed)
        for (x1, y1, x2, y2), score, cls in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist()):
            results.append({"image_id": image_id, "category_id": categories[int(cls)],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    file = out / f"predictions_{split}.json"
    file.write_text(json.dumps(results), encoding="utf-8")
    mean = {k: round(statistics.fmean(s[k] for s in speeds), 3) for k in speeds[0]} if speeds else {}
    return {"file": str(file), "images": len(paths), "detections": len(results), "predictor_ms_per_image": mean,
            "first_image": str(next(iter(paths)))}


# ----- latency --------------------------------------------------------------------------------
def letterboxed(image_file: Path, imgsz: int) -> tuple[np.ndarray, torch.Tensor]:
    """The original BGR image and its imgsz x imgsz letterbox as Ultralytics' predictor feeds it."""
    original = imread(str(image_file))
    if original is None:
        raise SystemExit(f"{image_file}: cannot read image")
    boxed = LetterBox(new_shape=(imgsz, imgsz), auto=False, stride=32)(image=original)
    tensor = torch.from_numpy(np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1))).float().div(255)[None]
    return original, tensor


def export_onnx(weights: Path, imgsz: int, end_to_end: bool) -> Path:
    """Ultralytics' ONNX export (static 1x3xSxS, onnxslim simplification, its default opset) of
    the head its predictor ran: the default `nms=None` one (for YOLO26: one-to-many, NMS outside
    the graph), or with `nms=False` the one-to-one head with its top-k when that is what ran."""
    return Path(YOLO(str(weights)).export(format="onnx", imgsz=imgsz, device="cpu", batch=1, verbose=False,
                                          **({"nms": False} if end_to_end else {})))


def detections(raw: Any, end_to_end: bool, x: torch.Tensor, original: np.ndarray) -> torch.Tensor:
    """Ultralytics' detection postprocess (DetectionPredictor.postprocess without the Results
    wrapper): conf filter + top max_det for end-to-end outputs, else NMS; boxes to original pixels."""
    det = nms.non_max_suppression(raw, CONF, IOU, max_det=MAX_DET, nc=0, end2end=end_to_end)[0]
    det[:, :4] = ops.scale_boxes(x.shape[2:], det[:, :4], original.shape)
    return det


def time_latency(model: YOLO, weights: Path, image_file: Path, imgsz: int, threads: int, repeats: int
                 ) -> dict[str, Any]:
    """Median ms per image of eager PyTorch and ONNX Runtime (interleaved), see the module docstring."""
    backend = model.predictor.model  # set up by the prediction pass: the fused eval model it ran
    end_to_end = bool(backend.end2end)
    original, x = letterboxed(image_file, imgsz)
    torch.set_num_threads(threads)
    onnx_file = export_onnx(weights, imgsz, end_to_end)
    runners: dict[str, Callable[[], torch.Tensor]] = {
        "pytorch": lambda: detections(backend(x), end_to_end, x, original),
        "onnxruntime": _onnx_runner(onnx_file, threads, end_to_end, x, original),
    }
    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.inference_mode():
        for i in range(3 + repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                if i >= 3:
                    times[name].append((time.perf_counter() - start) * 1000)
        parity = _parity(runners["pytorch"](), runners["onnxruntime"]())
    return {"latency_ms": {k: round(statistics.median(v), 3) for k, v in times.items()},
            "latency_ms_mean": {k: round(statistics.fmean(v), 3) for k, v in times.items()},
            "runs": repeats, "threads": threads, "image": str(image_file), "input_shape": list(x.shape),
            "end2end": end_to_end, "onnx_file": str(onnx_file), "onnx_parity": parity}


def _onnx_runner(file: Path, threads: int, end_to_end: bool, x: torch.Tensor, original: np.ndarray
                 ) -> Callable[[], torch.Tensor]:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: detections(torch.from_numpy(session.run(None, {name: x.numpy()})[0]), end_to_end, x, original)


def _parity(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, Any]:
    """ONNX Runtime's detections against eager PyTorch's: how many of the reference's find one of
    the same class at IoU >= 0.99 with a score within 1e-4 (order-free: near-tied scores of an
    undertrained model make the order arbitrary)."""
    matched = 0
    if len(reference) and len(candidate):
        iou = box_iou(reference[:, :4], candidate[:, :4])
        same_class = reference[:, 5:6] == candidate[:, 5][None]
        same = same_class & ((reference[:, 4:5] - candidate[:, 4][None]).abs() <= 1e-4)
        matched = int(((iou >= 0.99) & same).any(dim=1).sum())
    return {"matched": matched, "reference_detections": len(reference), "candidate_detections": len(candidate)}


def parameter_counts(weights: Path) -> dict[str, Any]:
    """Parameters of the model as trained (for YOLO26 both heads), and of the model its predictor
    runs: fused (Conv+BN merged) with the head it does not use removed (by default the one-to-one)."""
    net = YOLO(str(weights)).model.float()
    trained = sum(p.numel() for p in net.parameters())
    two_heads = getattr(net.model[-1], "one2one_cv2", None) is not None
    deployed = sum(p.numel() for p in net.fuse(verbose=False).parameters())
    return {"params": trained, "params_inference": deployed, "trained_one_to_one_head": two_heads}


def versions() -> dict[str, Any]:
    found = {}
    for name in VERSION_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return {**found, "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    configure_ultralytics(args.threads)
    data = check_det_dataset(args.data, autodownload=False)
    weights, training = train(args, out)

    model = YOLO(str(weights))
    predictions = {s: predict_split(model, data, s, args.coco_gt[s], args.imgsz, out) for s in args.predict_split}
    latency: dict[str, Any] = {}
    if predictions:  # timed on the first image of the first split predicted
        first_image = Path(next(iter(predictions.values()))["first_image"])
        latency = time_latency(model, weights, first_image, args.imgsz, args.threads, args.repeats)
    result = {"tool": "ultralytics", "model": args.model, "data": str(Path(args.data).absolute()),
              "imgsz": args.imgsz, "seed": args.seed, "threads": args.threads, "training": training,
              "predictions": predictions, "latency": latency, **parameter_counts(weights),
              "settings": {"conf": CONF, "max_det": MAX_DET, "iou": IOU, "env": {
                  k: os.environ.get(k) for k in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR")}},
              "network_attempts": NETWORK_ATTEMPTS, "versions": versions()}
    (out / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print_summary(result, out)
    return 0


def print_summary(result: dict[str, Any], out: Path) -> None:
    t = result["training"]
    print(f"\n{result['model']} (ultralytics {result['versions']['ultralytics']}), {result['params']:,} params "
          f"({result['params_inference']:,} fused for inference)")
    print(f"trained {t['epochs_completed']} epochs in {t['train_seconds']} s of training loops "
          f"({t['images_per_s']} images/s, {t['torch_threads_in_training']} threads; "
          f"validations {t['validation_runs_seconds']} s; "
          f"train() call {t['train_call_seconds']} s; optimizer {t['optimizer']} lr0 {t['lr0']})")
    for split, p in result["predictions"].items():
        print(f"{split}: {p['detections']} detections on {p['images']} images -> {p['file']}")
    if result["latency"]:
        print(f"latency ms/image (batch 1, {result['threads']} threads): {result['latency']['latency_ms']}; "
              f"ONNX parity {result['latency']['onnx_parity']}")
    if result["network_attempts"]:
        print(f"WARNING: network attempts refused: {result['network_attempts']}")
    print(f"-> {out / 'result.json'}")


if __name__ == "__main__":
    sys.exit(main())
