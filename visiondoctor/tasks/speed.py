"""Latency of a run's model in each runtime, written to `latency.json` for `visiondoctor compare`.

    {"device": "cpu", "image_size": 160, "batch_size": 1, "threads": 1, "runs": 20,
     "params": 2.3e6, "flops": 3.1e8,
     "latency_ms": {"pytorch": 21.0, "torchscript": 19.2, "onnxruntime": 9.8},        (medians)
     "latency_ms_mean": {...}, "skipped": {"torchscript": "why"}}

Every runtime sees the same image (the first evaluated image of the run, resized to the model's
input size) one at a time, with the same number of threads (1 by default: a figure that does not
depend on how many cores are free); a runtime that cannot run the model is listed under `skipped`.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from visiondoctor.data.images import load_rgb
from visiondoctor.data.samples import DataError
from visiondoctor.evaluation.latency import time_variants, torch_threads
from visiondoctor.evaluation.speed import count_flops, count_params, example_image
from visiondoctor.rundir import RunDir
from visiondoctor.tasks.export import OnnxDetector, export_onnx, script_model
from visiondoctor.tasks.pipeline import load_run_model

log = logging.getLogger(__name__)

RUNTIMES = ("pytorch", "torchscript", "onnxruntime")


def run_image(run: RunDir) -> torch.Tensor | None:
    """The first image the run was evaluated on (gt.json), or None (a synthetic image is used then)."""
    try:
        gt = run.read_json("gt.json")
        return load_rgb(Path(gt.get("image_root", "")) / gt["images"][0]["file_name"])
    except (OSError, ValueError, KeyError, IndexError, TypeError, DataError) as exc:
        log.warning("latency: no evaluated image to time on in %s (%s); using a synthetic image", run.path, exc)
        return None


def _runner(runtime: str, model: nn.Module, image_size: int, workdir: Path, threads: int | None
            ) -> Callable[[torch.Tensor], Any]:
    if runtime == "pytorch":
        return lambda x: model([x])
    if runtime == "torchscript":
        scripted = script_model(model)
        return lambda x: scripted([x])
    if runtime == "onnxruntime":
        detector = OnnxDetector(export_onnx(model, image_size, workdir / "model.onnx"), threads=threads)
        return detector.predict
    raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")


@torch.no_grad()
def measure_runtimes(model: nn.Module, image_size: int, runtimes: Sequence[str] = RUNTIMES, runs: int = 20,
                     warmup: int = 3, image: torch.Tensor | None = None, threads: int | None = 1) -> dict[str, Any]:
    """Median and mean latency (ms per image, batch 1, CPU, `threads` threads in every runtime) of
    `model` in each runtime, timed interleaved so load changes hit all alike, with params and
    FLOPs: latency.json's format."""
    model = model.cpu().eval()
    x = example_image(image_size, image)
    result: dict[str, Any] = {"device": "cpu", "image_size": image_size, "batch_size": 1, "runs": runs,
                              "params": count_params(model), "flops": count_flops(model, [x]),
                              "latency_ms": {}, "latency_ms_mean": {}, "skipped": {}}
    with tempfile.TemporaryDirectory(prefix="vd-latency-") as tmp, torch_threads(threads):
        result["threads"] = torch.get_num_threads()
        runners = {}
        for runtime in runtimes:
            try:
                runners[runtime] = _runner(runtime, model, image_size, Path(tmp), threads)
            except (ImportError, RuntimeError) as exc:  # ExportError is a RuntimeError
                result["skipped"][runtime] = str(exc).splitlines()[0][:300]
                log.warning("latency: %s skipped: %s", runtime, result["skipped"][runtime])
        if runners:
            stats = time_variants(runners, [x] * runs, warmup)
            result["latency_ms"] = {k: s.median_ms for k, s in stats.items()}
            result["latency_ms_mean"] = {k: s.mean_ms for k, s in stats.items()}
    return result


def measure_run(run_dir: str | Path, runtimes: Sequence[str] = RUNTIMES, runs: int = 20, warmup: int = 3,
                threads: int | None = 1) -> Path:
    """Measure a finished run's best weights in each runtime on CPU; write and return latency.json."""
    run = RunDir.open(run_dir)
    model, cfg, _ = load_run_model(run, torch.device("cpu"))
    result = measure_runtimes(model, cfg.model.image_size, runtimes, runs, warmup, run_image(run), threads)
    result["model"] = cfg.model.name
    return run.write_json("latency.json", result)
