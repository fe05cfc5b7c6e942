"""`visiondoctor export RUN --format onnx|torchscript`, and ONNX Runtime inference.

The ONNX graph holds the whole detector — resize and normalisation, network, box decoding and
NMS — for one image of the run's input size (image_size x image_size). `OnnxDetector` resizes any
image to that size with the same bilinear resize the PyTorch models use and maps the boxes back,
so it returns what the PyTorch model returns: {boxes (xyxy pixels), scores, labels}. For the SSD
family (fixed square input) this is the PyTorch pipeline exactly; R-CNN-style models keep the aspect
ratio in PyTorch, so on non-square images their ONNX results differ (the graph is traced at one size).
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.ops import box_iou

from visiondoctor.evaluation.latency import onnxruntime_available, ort_session
from visiondoctor.rundir import RunDir, write_bytes_atomic
from visiondoctor.tasks.pipeline import load_run_model

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
OUTPUT_NAMES = ("boxes", "scores", "labels")
ONNX_HINT = "ONNX export needs the `onnx` extra: pip install visiondoctor[onnx]"


class ExportError(RuntimeError):
    pass


class _SingleImage(nn.Module):
    """One CHW image in, (boxes, scores, labels) out: a fixed output order whatever the order of the
    keys in the model's result dict (SSD and the R-CNNs differ)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([image])
        if isinstance(out, tuple):  # scripted torchvision detectors return (losses, detections)
            out = out[1]
        det = out[0]
        return det["boxes"], det["scores"], det["labels"]


def export_onnx(model: nn.Module, image_size: int, path: str | Path, opset: int = 17,
                metadata: dict[str, str] | None = None) -> Path:
    """Trace `model` (eval mode) on one image_size x image_size image and write an ONNX graph whose
    input is `image` [3, H, W] float in [0, 1] and outputs boxes [N, 4], scores [N], labels [N]."""
    try:
        import onnx  # deferred: the optional `onnx` extra
    except ImportError as exc:
        raise ExportError(f"{ONNX_HINT} ({exc})") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _SingleImage(model.eval()).eval()
    device = next(model.parameters()).device
    example = torch.rand(3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # The TorchScript-based exporter (dynamo=False) handles torchvision detectors' data-dependent
        # postprocessing (NMS, top-k); the input size is fixed, which is what deployment uses.
        with warnings.catch_warnings():  # the tracer's notes on constants in torchvision's postprocessing
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (example,), str(tmp), opset_version=opset, dynamo=False,
                              input_names=["image"], output_names=list(OUTPUT_NAMES))
        graph = onnx.load(str(tmp))
        for key, value in {"visiondoctor.image_size": str(image_size), **(metadata or {})}.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(graph)
        write_bytes_atomic(path, graph.SerializeToString())
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - any tracer/exporter failure is reported with the model named
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def script_model(model: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript by scripting (keeps the data-dependent postprocessing); ExportError if the model
    is not scriptable (e.g. the effdet wrapper)."""
    try:
        with warnings.catch_warnings():  # torch.jit.script's deprecation notice; scripting still works
            warnings.simplefilter("ignore")
            return torch.jit.script(model.eval())
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{type(model).__name__} is not scriptable ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); export it with --format onnx"
                          ) from exc


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = script_model(model)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        scripted.save(str(tmp))
        write_bytes_atomic(path, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_run(run_dir: str | Path, format: str = "onnx", out: str | Path | None = None, opset: int = 17) -> Path:
    """Export a run's best weights; returns the written file (default runs/<name>/export/model.<ext>)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    run = RunDir.open(run_dir)
    model, cfg, category_map = load_run_model(run, torch.device("cpu"))
    suffix = ".onnx" if format == "onnx" else ".pt"
    out = Path(out) if out else run.path / "export" / f"model{suffix}"
    if out.is_dir() or not out.suffix:
        out = out / f"model{suffix}"
    if format == "onnx":
        meta = {"visiondoctor.model": cfg.model.name, "visiondoctor.categories": json.dumps(category_map.to_dict())}
        path = export_onnx(model, cfg.model.image_size, out, opset, meta)
    else:
        path = export_torchscript(model, out)
    log.info("exported %s (%s) to %s", run.path.name, format, path)
    return path


class OnnxDetector:
    """ONNX Runtime inference with the PyTorch detectors' interface: call it with a list of CHW float
    images in [0, 1]; get a list of {boxes, scores, labels} tensors in each image's own pixels."""

    def __init__(self, path: str | Path, threads: int | None = None):
        if not onnxruntime_available():
            raise ImportError(ONNX_HINT)
        self.path = Path(path)
        self.session = ort_session(str(path), threads)
        shape = self.session.get_inputs()[0].shape
        self.input_name = self.session.get_inputs()[0].name
        if len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
            raise ValueError(f"{path}: expected one image input [3, H, W] of fixed size, got {shape}")
        self.size = (int(shape[1]), int(shape[2]))
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [self.predict(image) for image in images]

    def predict(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = image.shape[-2:]
        x = image.detach().float().cpu()
        if (h, w) != self.size:
            x = torch.nn.functional.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False)[0]
        boxes, scores, labels = self.session.run(list(OUTPUT_NAMES), {self.input_name: x.contiguous().numpy()})
        boxes = torch.from_numpy(boxes)
        if (h, w) != self.size:
            scale = torch.tensor([w / self.size[1], h / self.size[0]] * 2, dtype=boxes.dtype)
            boxes = boxes * scale
        return {"boxes": boxes, "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels).long()}

    def categories(self) -> dict[str, Any] | None:
        """The run's category map (as categories.json) stored in the graph at export, when present."""
        raw = self.metadata.get("visiondoctor.categories")
        return json.loads(raw) if raw else None


@dataclass(frozen=True)
class Parity:
    """How far a runtime's detections are from PyTorch's on one image."""
    reference_count: int
    candidate_count: int
    compared: int  # reference detections that had to be matched
    matched: int
    max_score_diff: float
    max_box_diff: float  # pixels, over matched detections

    @property
    def ok(self) -> bool:
        return self.matched == self.compared and self.reference_count == self.candidate_count


def parity(reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], min_iou: float = 0.99,
           score_atol: float = 1e-4) -> Parity:
    """Match every reference detection to its own candidate detection with the same label, IoU >=
    `min_iou` and a score within `score_atol`. Detections tied (within `score_atol`) with the lowest
    reference score need no match: at the detections-per-image cut such ties may fall either way."""
    scores, n_ref, n_cand = reference["scores"], len(reference["scores"]), len(candidate["scores"])
    if n_ref == 0 or n_cand == 0:
        return Parity(n_ref, n_cand, n_ref, 0, 0.0, 0.0)
    required = scores > scores.min() + score_atol
    if not bool(required.any()):  # every score tied: nothing distinguishes the cut, match them all
        required = torch.ones_like(required)
    close = ((box_iou(reference["boxes"], candidate["boxes"]) >= min_iou)
             & (reference["labels"][:, None] == candidate["labels"][None, :])
             & ((reference["scores"][:, None] - candidate["scores"][None, :]).abs() <= score_atol))
    used: set[int] = set()
    matched, score_diff, box_diff = 0, 0.0, 0.0
    for i in torch.nonzero(required).flatten().tolist():
        j = next((k for k in torch.nonzero(close[i]).flatten().tolist() if k not in used), None)
        if j is None:
            continue
        used.add(j)
        matched += 1
        score_diff = max(score_diff, float((candidate["scores"][j] - scores[i]).abs()))
        box_diff = max(box_diff, float((candidate["boxes"][j] - reference["boxes"][i]).abs().max()))
    return Parity(n_ref, n_cand, int(required.sum()), matched, score_diff, box_diff)
