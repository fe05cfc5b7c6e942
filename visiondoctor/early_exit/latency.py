"""Latency of an early-exit model's paths, in eager PyTorch and in ONNX Runtime.

A path is "leave at exit k after the heads of some earlier exits ran" (a threshold of +inf skips
an exit's head): `PathCost.paths(num_exits)` lists them, `measure_paths` times every one of
them per image on the same images, interleaved (visiondoctor.evaluation.latency). Routing,
default boxes, decoding and NMS are the model's own code in both runtimes; ONNX Runtime runs the
network pieces — every trunk stage and every exit head is exported as its own graph
(`OnnxExitBackend`), so an image that goes on reuses the stage output it already has, exactly as
in eager mode.
"""
from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from visiondoctor.evaluation.early_exit import PathCost
from visiondoctor.evaluation.latency import LatencyStats, ort_session, time_variants, torch_threads
from visiondoctor.models.early_exit import EarlyExitSSDLite

NEVER_PASS = 2.0  # a threshold above every confidence (all signals are in [0, 1]): the head runs, nobody leaves


def path_thresholds(k: int, ran_before: Sequence[bool], num_exits: int) -> list[float]:
    """Thresholds that send every image down the path (leave at k; earlier heads run per `ran_before`)."""
    out = [NEVER_PASS if ran else math.inf for ran in ran_before]
    if k < num_exits - 1:
        out.append(-math.inf)  # leave here
        out += [math.inf] * (num_exits - 2 - k)
    return out


def path_name(k: int, ran_before: Sequence[bool], names: Sequence[str]) -> str:
    tried = [names[j] for j, ran in enumerate(ran_before) if ran]
    return names[k] + (f" (after {', '.join(tried)})" if tried else "")


@torch.no_grad()
def measure_paths(model: EarlyExitSSDLite, images: Sequence[Tensor], backend: Any = None, threads: int | None = 1,
                  warmup: int = 3) -> tuple[PathCost, dict[str, LatencyStats]]:
    """ms per image (batch 1) of every path, on `images` (float CHW tensors already on the model's device)."""
    e = model.num_exits
    variants: dict[str, Callable[[Tensor], Any]] = {}
    keys = {}
    for k, ran in PathCost.paths(e):
        name = path_name(k, ran, model.exit_names)
        thresholds = path_thresholds(k, ran, e)
        variants[name] = lambda x, t=thresholds: model.detect([x], thresholds=t, backend=backend)
        keys[name] = (k, ran)
    with torch_threads(threads):
        stats = time_variants(variants, list(images), warmup=warmup)
    latency = PathCost({keys[n]: s.mean_ms for n, s in stats.items()}, {keys[n]: s.median_ms for n, s in stats.items()})
    return latency, stats


@torch.no_grad()
def measure_policy(model: EarlyExitSSDLite, images: Sequence[Tensor], thresholds: Sequence[float], backend: Any = None,
                   threads: int | None = 1, warmup: int = 3) -> dict[str, LatencyStats]:
    """End-to-end ms per image (batch 1) of the full model alone and of the early-exit policy, interleaved."""
    never = [math.inf] * (model.num_exits - 1)
    variants = {"full": lambda x: model.detect([x], thresholds=never, backend=backend),
                "early_exit": lambda x: model.detect([x], thresholds=list(thresholds), backend=backend)}
    with torch_threads(threads):
        return time_variants(variants, list(images), warmup=warmup)


@torch.no_grad()
def path_flops(model: EarlyExitSSDLite, image: Tensor) -> PathCost:
    """FLOPs of every path on one image (torch.utils.flop_counter: convolutions and matrix products,
    2 per multiply-add). Counted once per trunk stage and per exit head, then summed along each path:
    decoding and NMS have no such operation, so the sum is the path's count. Unaffected by machine
    load, unlike latency."""
    def count(fn: Callable[[], Any]) -> tuple[float, Any]:
        counter = FlopCounterMode(display=False)
        with counter:
            out = fn()
        return float(counter.get_total_flops()), out

    x = model.transform([image])[0].tensors
    stage, head = [], []
    for k in range(model.num_exits):
        flops, x = count(lambda: model.run_stage(k, x))
        stage.append(flops)
        head.append(count(lambda: model.run_head(k, x))[0])
    table = {(k, ran): sum(stage[: k + 1]) + head[k] + sum(h for h, r in zip(head, ran) if r)
             for k, ran in PathCost.paths(model.num_exits)}
    return PathCost(table, dict(table))


class _Stage(nn.Module):
    def __init__(self, model: EarlyExitSSDLite, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: Tensor) -> Tensor:
        return self.model.run_stage(self.k, x)


class _Head(nn.Module):
    def __init__(self, model: EarlyExitSSDLite, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, _ = self.model.run_head(self.k, x)
        return out["bbox_regression"], out["cls_logits"]


class OnnxExitBackend:
    """The model's trunk stages and exit heads as ONNX Runtime sessions (CPU); an `ExitBackend`."""

    def __init__(self, model: EarlyExitSSDLite, image_size: int, workdir: str | Path | None = None,
                 threads: int | None = 1, opset: int = 17):
        model = model.eval()
        self._tmp = tempfile.TemporaryDirectory(prefix="vd-early-exit-onnx-") if workdir is None else None
        folder = Path(workdir or self._tmp.name)
        folder.mkdir(parents=True, exist_ok=True)
        self.stages, self.heads, self.grids = [], [], []
        x = torch.zeros(1, 3, image_size, image_size)
        with torch.no_grad():
            for k in range(model.num_exits):
                stage_path = _export(_Stage(model, k), x, folder / f"stage{k}.onnx", ["x"], ["y"], opset)
                x = model.run_stage(k, x)
                head_path = _export(_Head(model, k), x, folder / f"head{k}.onnx", ["x"],
                                    ["bbox_regression", "cls_logits"], opset)
                self.grids.append(model.run_head(k, x)[1])
                self.stages.append(ort_session(str(stage_path), threads))
                self.heads.append(ort_session(str(head_path), threads))

    def run_stage(self, k: int, x: Tensor) -> Tensor:
        return torch.from_numpy(self.stages[k].run(None, {"x": x.detach().cpu().numpy()})[0])

    def run_head(self, k: int, x: Tensor) -> tuple[dict[str, Tensor], list[tuple[int, int]]]:
        bbox, cls = self.heads[k].run(None, {"x": x.detach().cpu().numpy()})
        return {"bbox_regression": torch.from_numpy(bbox), "cls_logits": torch.from_numpy(cls)}, self.grids[k]


def _export(module: nn.Module, x: Tensor, path: Path, inputs: list[str], outputs: list[str], opset: int) -> Path:
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(module.eval(), (x,), str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path
