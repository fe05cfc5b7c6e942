"""Latency of a run's model in each runtime, written to `latency.json` for `visiondoctor compare`.

    {"device": "cpu", "image_size": 160, "batch_size": 1, "threads": 1, "runs": 20,
     "params": 2.3e6, "flops": 3.1e8,
     "latency_ms": {"pytorch": 21.0, "torchscript": 19.2, "onnxruntime": 9.8},        (medians)
     "latency_ms_mean": {...}, "skipped": {"torchscript": "why"}}

Every runtime sees the same image (the first evaluated image of the run, resized to the model's
input size) one at a time, with the same number of threads (1 by default: a figure that does not
depend on how many cores are free); a runtime that cannot run the model is listed under `skipped`.
A segmentation model is timed as exported: one image in, its logits at the input size out. On a GPU
(`device`), PyTorch and TorchScript run there and ONNX Runtime (CPU only here) is skipped, so that
every figure of one latency.json is of one device.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from visiondoctor.engine.trainer import resolve_device
from visiondoctor.evaluation.latency import time_variants, torch_threads
from visiondoctor.evaluation.speed import count_flops, count_params, example_image
from visiondoctor.rundir import RunDir
from visiondoctor.tasks.export import (
    OnnxDetector,
    OnnxSegmenter,
    export_onnx,
    run_image,
    script_model,
    single_image_module,
)
from visiondoctor.tasks.pipeline import load_run_model, run_task

log = logging.getLogger(__name__)

RUNTIMES = ("pytorch", "torchscript", "onnxruntime")


def _runner(runtime: str, model: nn.Module, image_size: int, workdir: Path, threads: int | None,
            contract: str = "detection") -> Callable[[torch.Tensor], Any]:
    if runtime == "pytorch":
        single = single_image_module(model, contract)
        return lambda x: single(x)
    if runtime == "torchscript":
        scripted = script_model(model, contract, image_size)
        return (lambda x: scripted(x)) if contract == "segmentation" else (lambda x: scripted([x]))
    if runtime == "onnxruntime":
        if next(model.parameters()).device.type != "cpu":
            raise RuntimeError("ONNX Runtime is timed on CPU only; measure with device cpu for it")
        path = export_onnx(model, image_size, workdir / "model.onnx", contract=contract)
        session = OnnxSegmenter(path, threads) if contract == "segmentation" else OnnxDetector(path, threads=threads)
        return session.logits if contract == "segmentation" else session.predict
    raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")


@torch.no_grad()
def measure_runtimes(model: nn.Module, image_size: int, runtimes: Sequence[str] = RUNTIMES, runs: int = 20,
                     warmup: int = 3, image: torch.Tensor | None = None, threads: int | None = 1,
                     contract: str = "detection", device: str | torch.device = "cpu") -> dict[str, Any]:
    """Median and mean latency (ms per image, batch 1, `threads` threads in every runtime) of `model`
    on `device` in each runtime, timed interleaved so load changes hit all alike, with params and
    FLOPs: latency.json's format."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = example_image(image_size, image).to(device)
    result: dict[str, Any] = {"device": str(device), "image_size": image_size, "batch_size": 1, "runs": runs,
                              "params": count_params(model), "flops": count_flops(single_image_module(model, contract), x),
                              "latency_ms": {}, "latency_ms_mean": {}, "skipped": {}}
    with tempfile.TemporaryDirectory(prefix="vd-latency-") as tmp, torch_threads(threads):
        result["threads"] = torch.get_num_threads()
        runners = {}
        for runtime in runtimes:
            try:
                runners[runtime] = _runner(runtime, model, image_size, Path(tmp), threads, contract)
            except (ImportError, RuntimeError) as exc:  # ExportError is a RuntimeError
                result["skipped"][runtime] = str(exc).splitlines()[0][:300]
                log.warning("latency: %s skipped: %s", runtime, result["skipped"][runtime])
        if runners:
            stats = time_variants(runners, [x] * runs, warmup)
            result["latency_ms"] = {k: s.median_ms for k, s in stats.items()}
            result["latency_ms_mean"] = {k: s.mean_ms for k, s in stats.items()}
    return result


def measure_run(run_dir: str | Path, runtimes: Sequence[str] = RUNTIMES, runs: int = 20, warmup: int = 3,
                threads: int | None = 1, device: str = "cpu") -> Path:
    """Measure a finished run's best weights in each runtime on `device`; write and return latency.json."""
    run = RunDir.open(run_dir)
    task, _, _ = run_task(run)
    target = resolve_device(device)
    model, cfg, _ = load_run_model(run, target)
    result = measure_runtimes(model, cfg.model.image_size, runtimes, runs, warmup, run_image(run), threads,
                              task.contract, target)
    result["model"] = cfg.model.name
    return run.write_json("latency.json", result)
