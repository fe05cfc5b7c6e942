"""`visiondoctor export RUN --format onnx|torchscript`, and ONNX Runtime inference.

Detection: the ONNX graph holds the whole detector — resize and normalisation, network, box
decoding and NMS — for one image of the run's input size (image_size x image_size). `OnnxDetector`
resizes any image to that size with the same bilinear resize the PyTorch models use and maps the
boxes back, so it returns what the PyTorch model returns: {boxes (xyxy pixels), scores, labels}. For
the SSD family (fixed square input) this is the PyTorch pipeline exactly; R-CNN-style models keep the
aspect ratio in PyTorch, so on non-square images their ONNX results differ (the graph is traced at one size).

Segmentation: the graph takes one image [3, S, S] in [0, 1] (S = the run's image size) and returns
the main head's logits [C, S, S] at the input size, normalisation included (`SegmentationLogits`).
The export checks the graph against PyTorch on a real image of the run (ONNX Runtime, when
installed): the largest absolute difference of the logits must be at most `LOGITS_ATOL`.
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

from visiondoctor.data.images import load_rgb
from visiondoctor.data.samples import DataError
from visiondoctor.data.segmentation import IMAGENET_MEAN, IMAGENET_STD
from visiondoctor.evaluation.latency import onnxruntime_available, ort_session
from visiondoctor.engine.trainer import resolve_device
from visiondoctor.evaluation.speed import example_image
from visiondoctor.rundir import RunDir, write_bytes_atomic
from visiondoctor.tasks.pipeline import load_run_model, run_task
from visiondoctor.tasks.segmentation import logits_at

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
OUTPUT_NAMES = ("boxes", "scores", "labels")
SEGMENTATION_OUTPUTS = ("logits",)
LOGITS_ATOL = 1e-4  # the largest |ONNX Runtime - PyTorch| logit an exported segmentation graph may show
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


class SegmentationLogits(nn.Module):
    """Images [N, 3, H, W] in [0, 1] -> main-head logits [N, C, H, W] at the input size: the
    normalisation the segmentation datasets apply, the model, the resize of its logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return logits_at(self.model, (images - self.mean) / self.std, tuple(images.shape[-2:]))


class _SingleSegmentation(nn.Module):
    """One CHW image in, its logits [C, H, W] out (the exported segmentation graph)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.net = SegmentationLogits(model)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image[None])[0]


def single_image_module(model: nn.Module, contract: str = "detection") -> nn.Module:
    """The model as one image in, fixed tensors out: what is exported and timed."""
    if contract not in ("detection", "segmentation"):
        raise ExportError(f"no export for {contract!r} models; expected detection or segmentation")
    return (_SingleImage(model.eval()) if contract == "detection" else _SingleSegmentation(model.eval())).eval()


def export_onnx(model: nn.Module, image_size: int, path: str | Path, opset: int = 17,
                metadata: dict[str, str] | None = None, contract: str = "detection") -> Path:
    """Trace `model` (eval mode) on one image_size x image_size image and write an ONNX graph whose
    input is `image` [3, H, W] float in [0, 1]; its outputs are boxes [N, 4], scores [N], labels [N]
    for a detector, logits [C, H, W] for a segmentation model (`contract`)."""
    try:
        import onnx  # deferred: the optional `onnx` extra
    except ImportError as exc:
        raise ExportError(f"{ONNX_HINT} ({exc})") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = single_image_module(model, contract)
    outputs = OUTPUT_NAMES if contract == "detection" else SEGMENTATION_OUTPUTS
    device = next(model.parameters()).device
    example = torch.rand(3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # The TorchScript-based exporter (dynamo=False) handles torchvision detectors' data-dependent
        # postprocessing (NMS, top-k); the input size is fixed, which is what deployment uses.
        with warnings.catch_warnings():  # the tracer's notes on constants in torchvision's postprocessing
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (example,), str(tmp), opset_version=opset, dynamo=False,
                              input_names=["image"], output_names=list(outputs))
        graph = onnx.load(str(tmp))
        for key, value in {"visiondoctor.image_size": str(image_size), "visiondoctor.task": contract,
                           **(metadata or {})}.items():
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


def script_model(model: nn.Module, contract: str = "detection", image_size: int = 0) -> torch.jit.ScriptModule:
    """TorchScript: a detector by scripting (keeps the data-dependent postprocessing; ExportError if
    the model is not scriptable, e.g. the effdet wrapper); a segmentation model traced as one image
    [3, S, S] in, logits [C, S, S] out (S = image_size)."""
    try:
        with warnings.catch_warnings():  # torch.jit's deprecation notices and the tracer's notes; both still work
            warnings.simplefilter("ignore")
            if contract == "segmentation":
                device = next(model.parameters()).device
                return torch.jit.trace(single_image_module(model, contract), example_image(image_size).to(device))
            return torch.jit.script(model.eval())
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{type(model).__name__} is not scriptable ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); export it with --format onnx"
                          ) from exc


def export_torchscript(model: nn.Module, path: str | Path, contract: str = "detection", image_size: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = script_model(model, contract, image_size)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        scripted.save(str(tmp))
        write_bytes_atomic(path, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_run(run_dir: str | Path, format: str = "onnx", out: str | Path | None = None, opset: int = 17,
               device: str = "cpu") -> Path:
    """Export a run's best weights, traced on `device`; returns the written file (default
    runs/<name>/export/model.<ext>). A segmentation graph is checked against PyTorch (check_logits)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    run = RunDir.open(run_dir)
    task, _, _ = run_task(run)
    model, cfg, category_map = load_run_model(run, resolve_device(device))
    suffix = ".onnx" if format == "onnx" else ".pt"
    out = Path(out) if out else run.path / "export" / f"model{suffix}"
    if out.is_dir() or not out.suffix:
        out = out / f"model{suffix}"
    if format == "onnx":
        meta = {"visiondoctor.model": cfg.model.name, "visiondoctor.categories": json.dumps(category_map.to_dict())}
        path = export_onnx(model, cfg.model.image_size, out, opset, meta, task.contract)
        if task.contract == "segmentation":
            check_logits(model, path, run_image(run))
    else:
        path = export_torchscript(model, out, task.contract, cfg.model.image_size)
    log.info("exported %s (%s) to %s", run.path.name, format, path)
    return path


def run_image(run: RunDir) -> torch.Tensor | None:
    """The first image the run is evaluated on (gt.json of a detection run, else the first image of its
    evaluation split), uint8 [3, H, W]; None when it cannot be read (callers use a synthetic image)."""
    try:
        if run.path.joinpath("gt.json").exists():
            gt = run.read_json("gt.json")
            return load_rgb(Path(gt.get("image_root", "")) / gt["images"][0]["file_name"])
        task, cfg, categories = run_task(run)
        return load_rgb(task.load_data(cfg, categories).split(cfg.eval.split).records[0].path)
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, DataError) as exc:
        log.warning("no evaluated image of %s could be read (%s); using a synthetic image", run.path, exc)
        return None


def check_logits(model: nn.Module, onnx_path: Path, image: torch.Tensor | None) -> float | None:
    """The largest |ONNX Runtime - PyTorch| logit on `image` (resized to the graph's input; noise when
    None). ExportError above LOGITS_ATOL; None (with a warning) without onnxruntime."""
    if not onnxruntime_available():
        log.warning("onnxruntime is not installed: the exported logits were not checked against PyTorch (%s)", ONNX_HINT)
        return None
    segmenter = OnnxSegmenter(onnx_path)
    x = example_image(segmenter.size[0], image)
    with torch.no_grad():
        reference = SegmentationLogits(model)(x[None].to(next(model.parameters()).device))[0].cpu()
    diff = float((segmenter.logits(x) - reference).abs().max())
    if diff > LOGITS_ATOL:
        raise ExportError(f"{onnx_path}: ONNX Runtime's logits differ from PyTorch's by up to {diff:.2e} "
                          f"(allowed {LOGITS_ATOL:.0e}); the export is not faithful")
    log.info("%s: ONNX Runtime logits within %.1e of PyTorch's (max |difference|) on %s image", onnx_path, diff,
             "a real" if image is not None else "a synthetic")
    return diff


class OnnxGraph:
    """An exported graph in an ONNX Runtime CPU session: one image [3, H, W] of a fixed size in; the
    metadata the export stored (visiondoctor.model, .task, .categories, .image_size)."""

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

    def categories(self) -> dict[str, Any] | None:
        """The run's category map (as categories.json) stored in the graph at export, when present."""
        raw = self.metadata.get("visiondoctor.categories")
        return json.loads(raw) if raw else None


class OnnxSegmenter(OnnxGraph):
    """ONNX Runtime inference of an exported segmentation graph: `logits(images)` takes float images
    in [0, 1] of the graph's input size ([3, S, S] or a batch [N, 3, S, S]) and returns their logits."""

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4:
            return torch.stack([self.logits(image) for image in images])
        if tuple(images.shape[-2:]) != self.size:
            raise ValueError(f"{self.path}: the graph takes {self.size[0]}x{self.size[1]} images, got "
                             f"{tuple(images.shape[-2:])}")
        (logits,) = self.session.run(list(SEGMENTATION_OUTPUTS), {self.input_name: images.detach().float().cpu()
                                                                   .contiguous().numpy()})
        return torch.from_numpy(logits)

    __call__ = logits


class OnnxDetector(OnnxGraph):
    """ONNX Runtime inference with the PyTorch detectors' interface: call it with a list of CHW float
    images in [0, 1]; get a list of {boxes, scores, labels} tensors in each image's own pixels."""

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
