"""Calibrate a trained early-exit run's exit policy and analyse what early exit buys.

    calibrate_and_analyse("runs/ee", max_map_drop=0.01)        # or target_latency_ms=30.0

Steps, all on files of the run directory and the data its config names:
1. every exit's detections and every candidate confidence signal on the calibration split (and
   on a held-out split: `test` by default) — one pass, the trunk once per batch;
2. mAP of each exit when every image is forced to leave there;
3. the confidence signal: Spearman correlation with the per-image AP gap to the full model;
4. latency of every path (eager PyTorch, and ONNX Runtime when installed), batch 1, warmed up,
   interleaved; FLOPs of each exit's path;
5. the threshold sweep (the speed–accuracy curve) and the operating point for the budget, checked
   on the held-out split; the policy's end-to-end latency measured against the full model;
6. the doctor's `early-exit.degenerate` check on the policy's exit statistics;
7. annotated images labelled with their exit.
Writes `early_exit.json`, `early_exit_images/*.png`, `plots/early_exit_gallery.png`, merges the
early-exit findings into diagnosis.json / diagnosis.md, and rebuilds report.html (its "Early
exit" section is visiondoctor/early_exit/report_sections.py).

`apply_policy(run, model)` sets a model's thresholds and signal from the run's early_exit.json.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.io import write_png

from visiondoctor.data.dataset import DetectionDataset, collate_detection
from visiondoctor.data.detection import load_detection_data
from visiondoctor.data.formats.coco import to_coco_dict
from visiondoctor.data.images import load_rgb
from visiondoctor.data.samples import CategoryMap, DetectionIndex
from visiondoctor.data.transforms import detection_transforms
from visiondoctor.doctor.checks.exits import check_exit_distribution
from visiondoctor.doctor.diagnosis_file import update_diagnosis
from visiondoctor.early_exit.latency import OnnxExitBackend, measure_paths, measure_policy, path_flops, path_name
from visiondoctor.engine.trainer import resolve_device
from visiondoctor.evaluation import early_exit as policy
from visiondoctor.evaluation.detections import detections_to_coco
from visiondoctor.evaluation.latency import onnxruntime_available
from visiondoctor.models.early_exit import CONFIDENCE_SIGNALS, EarlyExitSSDLite
from visiondoctor.report.plots import Tile, tile_grid
from visiondoctor.rundir import RunDir, write_bytes_atomic
from visiondoctor.tasks.pipeline import build_report, load_run_model
from visiondoctor.tasks.predict import annotate

log = logging.getLogger(__name__)

RESULTS_FILE = "early_exit.json"
IMAGES_DIR = "early_exit_images"
GALLERY_PLOT = "early_exit_gallery"
DEFAULT_MAX_MAP_DROP = 0.01  # 1 AP point, when no budget is given


def calibrate_and_analyse(run_dir: str | Path, max_map_drop: float | None = None,
                          target_latency_ms: float | None = None, split: str = "val", *,
                          held_out: str | None = "test", levels: int = 10, latency_images: int = 30,
                          threads: int = 1, onnx: bool = True, gallery: int = 6, device: str = "auto") -> dict[str, Any]:
    """Calibrate the run's exit thresholds on `split` to the budget (`max_map_drop` in AP units,
    0.01 = 1 point; or `target_latency_ms`, mean eager-PyTorch CPU ms per image; default: a 1-point
    drop), analyse, write the files and rebuild the report. Returns the early_exit.json content."""
    if max_map_drop is not None and target_latency_ms is not None:
        raise ValueError("give one budget: max_map_drop or target_latency_ms, not both")
    if max_map_drop is None and target_latency_ms is None:
        max_map_drop = DEFAULT_MAX_MAP_DROP
    run = RunDir.open(run_dir)
    run_device = resolve_device(device)
    model, cfg, category_map = load_run_model(run, run_device)
    if not isinstance(model, EarlyExitSSDLite):
        raise ValueError(f"{run.path}: model {cfg.model.name!r} has no early exits; train one with "
                         "--model ssdlite320_early_exit")
    data = load_detection_data(cfg, background=category_map.background)
    splits = {"train": data.train, "val": data.val, "test": data.test}
    if splits.get(split) is None:
        raise FileNotFoundError(f"{data.root}: no {split!r} split to calibrate on")
    held_index = splits.get(held_out) if held_out and held_out != split else None

    log.info("early exit: collecting every exit's detections on %s", split)
    cal = collect_records(model, splits[split], category_map, run_device, cfg.train.batch_size, cfg.eval.score_threshold)
    held = (collect_records(model, held_index, category_map, run_device, cfg.train.batch_size,
                            cfg.eval.score_threshold) if held_index is not None else None)

    forced = {split: [_headline(m) for m in policy.exit_metrics(cal)]}
    if held is not None:
        forced[held_out] = [_headline(m) for m in policy.exit_metrics(held)]

    correlations = policy.signal_correlations(cal, default=model.signal)
    signal = correlations["chosen"]
    log.info("early exit: confidence signal %s (mean Spearman vs AP gap %.3f)", signal,
             correlations["signals"][signal]["mean_vs_gap"] or float("nan"))

    # Latency of every path on CPU (the deployment case this analysis is about), batch 1.
    cpu_model = model.to("cpu").eval()
    timing_index = held_index if held_index is not None else splits[split]
    timing_images = _images(timing_index, latency_images)
    latency, runtimes = _measure_runtimes(cpu_model, timing_images, cfg.model.image_size, threads, onnx)
    eager = policy.PathCost.from_json(latency["pytorch"]["paths"])

    points = policy.sweep(cal, signal, eager, levels)
    chosen = policy.calibrate(points, max_map_drop, target_latency_ms)
    cpu_model.set_policy(chosen.thresholds, signal)
    held_result = policy.evaluate_point(held, signal, chosen.thresholds, eager) if held is not None else None
    _measure_policy(chosen.thresholds, signal, latency, runtimes, threads)
    for runtime in RUNTIMES:
        if "paths" in latency.get(runtime, {}):
            paths = policy.PathCost.from_json(latency[runtime]["paths"])
            latency[runtime]["predicted"] = {
                "per_exit_ms": [paths.cost(k, chosen.thresholds) for k in range(model.num_exits)],
                "policy_ms": paths.expected(policy.assign_exits(cal.signals[signal], chosen.thresholds),
                                               chosen.thresholds),
                "full_ms": paths.cost(model.num_exits - 1, [math.inf] * (model.num_exits - 1))}

    exits = policy.assign_exits(cal.signals[signal], chosen.thresholds)
    statistics = exit_statistics(cal, signal, chosen.thresholds, split)
    findings = degenerate_findings(statistics)
    result = {
        "model": cfg.model.name,
        "exit_names": model.exit_names,
        "exit_specs": model.exit_specs,
        "calibration_split": split,
        "held_out_split": held_out if held is not None else None,
        "budget": {"max_map_drop": max_map_drop} if max_map_drop is not None else {"target_latency_ms": target_latency_ms},
        "signal": {"chosen": signal, **correlations},
        "policy": {"signal": signal, "thresholds": chosen.to_json()["thresholds"]},
        "operating_point": chosen.to_json(),
        "held_out": held_result,
        "forced_exit": forced,
        "latency": latency,
        "flops": _flops(cpu_model, timing_images[0], chosen.thresholds, exits,
                        policy.assign_exits(held.signals[signal], chosen.thresholds) if held is not None else None),
        "frontier": {"levels": levels, "points": [p.to_json() for p in points],
                     "pareto": [p.to_json() for p in policy.pareto_front(points)]},
        "exit_statistics": statistics,
        "findings": findings,
        "gallery": write_gallery(run, cal, splits[split], exits, cal.signals[signal], category_map, gallery,
                                 cfg.eval.display_threshold),
    }
    run.write_json(RESULTS_FILE, result)
    merge_findings(run, findings)
    build_report(run)
    return result


# ----- collection --------------------------------------------------------------------------------------
@torch.no_grad()
def collect_records(model: EarlyExitSSDLite, index: DetectionIndex, category_map: CategoryMap,
                    device: torch.device, batch_size: int = 8, score_threshold: float = 0.0) -> policy.ExitRecords:
    """Every exit's detections (COCO results at >= score_threshold) and every candidate signal for every image."""
    loader = DataLoader(DetectionDataset(index, category_map, detection_transforms(train=False)),
                        batch_size=batch_size, collate_fn=collate_detection)
    model.eval()

    def category_of(label: int) -> int | None:
        return None if label < category_map.offset else category_map.to_dataset_id(label)

    ids: list[int] = []
    predictions: list[list[list[dict]]] = [[] for _ in range(model.num_exits)]
    signals: dict[str, list[list[float]]] = {name: [] for name in CONFIDENCE_SIGNALS}
    for images, targets in loader:
        per_image = model.detect_every_exit([im.to(device) for im in images])
        for target, exits in zip(targets, per_image):
            image_id = int(target["image_id"])
            ids.append(image_id)
            for k, det in enumerate(exits):
                predictions[k].append(detections_to_coco(det, image_id, category_of, score_threshold))
            for name, fn in CONFIDENCE_SIGNALS.items():
                signals[name].append([fn(det) for det in exits])
    gt = {**to_coco_dict(index), "image_root": str(index.root)}
    return policy.ExitRecords(gt, list(model.exit_names), ids, predictions,
                              {name: np.asarray(v, dtype=np.float64) for name, v in signals.items()})


def _images(index: DetectionIndex, n: int) -> list[torch.Tensor]:
    """The first n images of a split as float CHW tensors (what the model is given at inference)."""
    transform = detection_transforms(train=False)
    dataset = DetectionDataset(DetectionIndex(index.root, index.source, index.categories, index.records[:max(1, n)]),
                               CategoryMap.from_categories(index.categories), transform)
    return [dataset[i][0] for i in range(len(dataset))]


# ----- latency -----------------------------------------------------------------------------------------
Runtime = tuple[EarlyExitSSDLite, list[torch.Tensor], Any]  # (model, images on its device, backend or None)
RUNTIMES = ("pytorch", "onnxruntime", "pytorch_cuda")


def _measure_runtimes(model: EarlyExitSSDLite, images: list[torch.Tensor], image_size: int, threads: int,
                      onnx: bool) -> tuple[dict[str, Any], dict[str, Runtime]]:
    """Every path's latency per runtime: eager PyTorch on CPU always, ONNX Runtime (CPU) when it can
    run, eager PyTorch on CUDA when a GPU is present; and what each runtime runs."""
    out: dict[str, Any] = {"device": "cpu", "threads": threads, "images": len(images), "batch_size": 1}
    runtimes: dict[str, Runtime] = {"pytorch": (model, images, None)}
    if not onnx:
        out["onnxruntime"] = {"skipped": "disabled"}
    elif not onnxruntime_available():
        out["onnxruntime"] = {"skipped": "onnxruntime is not installed (pip install 'visiondoctor[onnx]')"}
    else:
        try:
            runtimes["onnxruntime"] = (model, images, OnnxExitBackend(model, image_size, threads=threads))
        except Exception as exc:  # noqa: BLE001 - an export failure skips the runtime, with the reason
            out["onnxruntime"] = {"skipped": f"export failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"}
    if torch.cuda.is_available():
        gpu = copy.deepcopy(model).to("cuda").eval()
        runtimes["pytorch_cuda"] = (gpu, [im.to("cuda") for im in images], None)
        out["cuda_device"] = torch.cuda.get_device_name(0)
    for runtime, (m, imgs, backend) in runtimes.items():
        paths, stats = measure_paths(m, imgs, backend, threads)
        out[runtime] = {"paths": paths.to_json(), "path_stats": {n: s.to_dict() for n, s in stats.items()}}
        log.info("early exit latency (%s): %s", runtime,
                 ", ".join(f"{path_name(k, ran, model.exit_names)} {ms:.1f} ms" for (k, ran), ms in paths.mean.items()))
    return out, runtimes


def _measure_policy(thresholds: Sequence[float], signal: str, latency: dict[str, Any], runtimes: dict[str, Runtime],
                    threads: int) -> None:
    """The policy end to end against the full model alone, per runtime, on the same images."""
    for runtime, (m, imgs, backend) in runtimes.items():
        m.set_policy(thresholds, signal)
        stats = measure_policy(m, imgs, thresholds, backend, threads)
        entry = latency[runtime]
        entry["measured"] = {name: s.to_dict() for name, s in stats.items()}
        full, early = stats["full"].mean_ms, stats["early_exit"].mean_ms
        entry["measured"]["latency_cut"] = round(1.0 - early / full, 4) if full > 0 else None


def _flops(model: EarlyExitSSDLite, image: torch.Tensor, thresholds: Sequence[float], exits: np.ndarray,
           held_exits: np.ndarray | None) -> dict[str, Any] | None:
    """FLOPs of every path, of each exit under the policy, and the policy's mean against the full model's."""
    try:
        paths = path_flops(model, image)
    except Exception as exc:  # noqa: BLE001 - an op the counter cannot handle leaves FLOPs unknown
        log.warning("early exit: FLOPs not counted: %s", exc)
        return None
    e = model.num_exits
    full = paths.cost(e - 1, [math.inf] * (e - 1))
    out: dict[str, Any] = {"paths": paths.to_json("flops"), "full": full,
                           "per_exit": [paths.cost(k, thresholds) for k in range(e)]}
    for name, routed in (("calibration", exits), ("held_out", held_exits)):
        if routed is not None:
            mean = paths.expected(routed, thresholds)
            out[name] = {"mean": mean, "cut": 1.0 - mean / full if full else None}
    return out


# ----- the doctor ----------------------------------------------------------------------------------------
def exit_statistics(records: policy.ExitRecords, signal: str, thresholds: Sequence[float], split: str) -> dict[str, Any]:
    """What the doctor's early-exit check reads: per-image exit (0-based), the confidences of the
    exits each image reached, the thresholds (null = never leave)."""
    conf = records.signals[signal]
    exits = policy.assign_exits(conf, thresholds)
    reached = [[round(float(c), 5) for c in conf[i, : k + 1]] for i, k in enumerate(exits)]
    return {"split": split, "signal": signal, "image_ids": records.image_ids, "exit_indices": exits.tolist(),
            "exit_confidences": reached, "thresholds": [None if t == math.inf else t for t in thresholds],
            "num_exits": records.num_exits, "distribution": policy.distribution(exits, records.num_exits)}


def degenerate_findings(statistics: dict[str, Any]) -> list[dict[str, Any]]:
    """The doctor's `early-exit.degenerate` check on exit statistics (as exit_statistics writes them)."""
    thresholds = [math.inf if t is None else float(t) for t in statistics["thresholds"]]
    found = check_exit_distribution(statistics["exit_indices"], statistics["exit_confidences"], thresholds,
                                    statistics["num_exits"])
    return [_json_safe(f.to_dict()) for f in found]


def _json_safe(value: Any) -> Any:
    """Non-finite floats (a never-taken exit's +inf threshold) as null, so the files stay strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def merge_findings(run: RunDir, findings: list[dict[str, Any]]) -> None:
    """Replace the early-exit findings in diagnosis.json (and diagnosis.md) with `findings`."""
    update_diagnosis(run.path, findings, redone=lambda finding_id: finding_id.startswith("early-exit."),
                     title=f"Diagnosis of {run.path.name}")


# ----- pictures -------------------------------------------------------------------------------------------
def write_gallery(run: RunDir, records: policy.ExitRecords, index: DetectionIndex, exits: np.ndarray,
                  confidences: np.ndarray, category_map: CategoryMap, n: int, threshold: float) -> list[dict[str, Any]]:
    """Annotated images labelled with the exit they left at (a few per exit): one PNG per image in
    early_exit_images/, and a ground truth | prediction grid in plots/early_exit_gallery.png."""
    if n <= 0 or not records.image_ids:
        return []
    by_id = {r.image_id: r for r in index.records}
    names = {c.id: c.name for c in index.categories}
    # Round-robin over the exits, so every exit that was taken is shown.
    queues = [list(np.flatnonzero(exits == k)) for k in range(records.num_exits)]
    chosen: list[int] = []
    while len(chosen) < n and any(queues):
        chosen += [int(q.pop(0)) for q in queues if q][: n - len(chosen)]
    chosen.sort()
    out_dir = run.path / IMAGES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, pairs = [], []
    for i in chosen:
        record, k = by_id[records.image_ids[i]], int(exits[i])
        exit_name = records.exit_names[k]
        image = load_rgb(record.path)
        dets = [d for d in records.predictions[k][i] if d["score"] >= threshold]
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (d["bbox"] for d in dets)]
        captions = [f"{names.get(d['category_id'], d['category_id'])} {d['score']:.2f}" for d in dets]
        banner = f"{exit_name} (conf {confidences[i, k]:.2f})"
        file = out_dir / f"{Path(record.file_name).stem}_{exit_name}.png"
        write_png(annotate(image, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                           [f"{exit_name}: {c}" for c in captions]), str(file))
        pixels = image.permute(1, 2, 0).numpy()
        h, w = pixels.shape[:2]
        gt_tile = Tile(f"{Path(record.file_name).name}: ground truth", pixels, w, h, record.boxes,
                       [names.get(c, str(c)) for c in record.category_ids], list(record.category_ids))
        pred_tile = Tile(f"left at {banner}", pixels, w, h, boxes, captions, [d["category_id"] for d in dets])
        pairs.append((gt_tile, pred_tile))
        entries.append({"image_id": records.image_ids[i], "file": str(file.relative_to(run.path)), "exit": k,
                        "exit_name": exit_name, "confidence": round(float(confidences[i, k]), 4)})
    if pairs:
        png = tile_grid(pairs, f"Early exit: where each image left (detections with score >= {threshold:g})")
        write_bytes_atomic(run.plots / f"{GALLERY_PLOT}.png", png)
    return entries


# ----- using a calibrated run ----------------------------------------------------------------------------
def apply_policy(run: RunDir, model: EarlyExitSSDLite) -> EarlyExitSSDLite:
    """Set the model's thresholds and confidence signal from the run's early_exit.json."""
    saved = run.read_json(RESULTS_FILE)["policy"]
    model.set_policy([math.inf if t is None else float(t) for t in saved["thresholds"]], saved["signal"])
    return model


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in ("map", "map50", "map75", "map_small", "map_medium", "map_large", "num_images")}


