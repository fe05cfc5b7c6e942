"""`visiondoctor predict RUN INPUT`: annotated images and a JSON of predictions for an image or a folder.

A detection run draws its boxes with class and score; a segmentation run blends its predicted
mask over the image (one colour per class, `alpha`), names the classes present in a legend, and
writes the label mask itself beside the picture (`masks/<stem>.png`, one label per pixel). Pixels
whose top class is less likely than `threshold` are left uncoloured. The same predictors annotate
video frames (tasks/video.py), in PyTorch or in ONNX Runtime.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import time

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from torchvision.io import write_png
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from visiondoctor.data.images import load_rgb
from visiondoctor.data.samples import CategoryMap
from visiondoctor.engine.progress import track
from visiondoctor.engine.trainer import resolve_device
from visiondoctor.rundir import RunDir, write_json_atomic
from visiondoctor.tasks.export import OnnxDetector, OnnxSegmenter, SegmentationLogits, export_run
from visiondoctor.tasks.pipeline import load_run_model, run_task

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
RUNTIMES = ("pytorch", "onnxruntime")
MASK_ALPHA = 0.5
Detector = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]
Segmenter = Callable[[torch.Tensor], torch.Tensor]  # images [N, 3, S, S] in [0, 1] -> logits [N, C, S, S]
Colour = tuple[int, int, int]


def list_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    raise FileNotFoundError(f"{path}: no such image or folder")


# ----- drawing -----------------------------------------------------------------------------------------

def annotate(image: torch.Tensor, boxes: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Draw boxes with captions on a uint8 CHW image."""
    if len(boxes) == 0:
        return image
    width = max(1, round(min(image.shape[-2:]) / 200))
    return draw_bounding_boxes(image, boxes, labels=captions, colors="yellow", width=width)


def class_colours(n: int) -> list[Colour]:
    """One colour per class label, the same in every image and frame (matplotlib's tab20, repeated)."""
    cmap = colormaps["tab20"]
    return [tuple(int(round(255 * c)) for c in cmap(i % 20)[:3]) for i in range(n)]  # type: ignore[misc]


def draw_text_box(image: torch.Tensor, lines: Sequence[tuple[str, Colour | None]], corner: str = "left",
                  max_width: float = 1.0) -> torch.Tensor:
    """Lines of text on a dark box in the top-left (or top-right) corner of a uint8 [3, H, W] image;
    a line with a colour gets a swatch of it (a legend), one without is written in yellow. Lines
    that do not fit in the image's height are summed up as "+N more"; a box wider than `max_width`
    of the image is not drawn (it would hide the image)."""
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, min(picture.size) // 16))
    pad, line_height = 3, max(draw.textbbox((0, 0), text, font=font)[3] for text, _ in lines) + 3
    fit = max(1, (picture.size[1] - 2 * pad) // line_height)
    if len(lines) > fit:
        lines = [*lines[:max(0, fit - 1)], (f"+{len(lines) - max(0, fit - 1)} more", None)]
    swatch = line_height - 4 if any(colour for _, colour in lines) else 0
    width = max(draw.textlength(text, font=font) for text, _ in lines) + swatch + 3 * pad
    if width > max_width * picture.size[0]:
        return image
    left = 0 if corner == "left" else max(0, picture.size[0] - int(width))
    draw.rectangle([left, 0, left + width, len(lines) * line_height + 2 * pad], fill=(0, 0, 0))
    for i, (text, colour) in enumerate(lines):
        top = pad + i * line_height
        if colour is not None:
            draw.rectangle([left + pad, top + 1, left + pad + swatch, top + 1 + swatch], fill=colour)
        draw.text((left + 2 * pad + swatch, top), text, fill=(255, 255, 0) if colour is None else (255, 255, 255),
                  font=font)
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1).contiguous()


def draw_masks(image: torch.Tensor, labels: torch.Tensor, drawn: torch.Tensor, names: Sequence[str],
               alpha: float = MASK_ALPHA) -> torch.Tensor:
    """Blend each class's pixels (`labels` [H, W] where `drawn`) over a uint8 image in its colour;
    a legend names the classes present, the largest first (where it takes at most half the width)."""
    colours = class_colours(len(names))
    counts = torch.bincount(labels[drawn], minlength=len(names))
    present = [c for c in counts.argsort(descending=True, stable=True).tolist() if counts[c] > 0]
    if not present:
        return image
    masks = torch.stack([(labels == c) & drawn for c in present])
    blended = draw_segmentation_masks(image, masks, alpha=alpha, colors=[colours[c] for c in present])
    return draw_text_box(blended, [(names[c], colours[c]) for c in present], corner="right", max_width=0.5)


# ----- predictors: images in, annotated images and JSON records out ------------------------------------

@dataclass
class Prediction:
    """One image's prediction: the annotated picture, its JSON record, and (segmentation) the label mask."""

    image: torch.Tensor  # uint8 [3, H, W]
    record: dict[str, Any] = field(default_factory=dict)
    mask: torch.Tensor | None = None  # uint8 [H, W] label per pixel
    inference_ms: float = 0.0  # the model's share of its batch (results on the CPU), drawing excluded


class Predictor(Protocol):
    device: torch.device
    names: Sequence[str]  # the class names, by label

    def __call__(self, images: list[torch.Tensor]) -> list[Prediction]: ...


def detection_records(det: dict[str, torch.Tensor], category_map: CategoryMap, threshold: float) -> list[dict[str, Any]]:
    """The detections at or above `threshold` as JSON records (xyxy pixels, label name, dataset id)."""
    keep = det["scores"] >= threshold
    return [{"bbox_xyxy": [round(v, 2) for v in box], "score": round(score, 4), "label": category_map.label_name(label),
             "category_id": category_map.to_dataset_id(label)}
            for box, score, label in zip(det["boxes"][keep].tolist(), det["scores"][keep].tolist(),
                                         det["labels"][keep].tolist())]


class DetectionPredictor:
    """Boxes with class and score at or above `threshold`, drawn and listed."""

    def __init__(self, detector: Detector, category_map: CategoryMap, device: torch.device, threshold: float):
        self.detector, self.category_map, self.device, self.threshold = detector, category_map, device, threshold
        self.names = category_map.names

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> list[Prediction]:
        start = time.perf_counter()
        outputs = [{k: v.detach().cpu() for k, v in det.items()}
                   for det in self.detector([image.float().div(255).to(self.device) for image in images])]
        inference_ms = (time.perf_counter() - start) * 1000.0 / max(1, len(images))
        predictions = []
        for image, det in zip(images, outputs):
            records = detection_records(det, self.category_map, self.threshold)
            keep = det["scores"] >= self.threshold
            drawn = annotate(image, det["boxes"][keep], [f"{r['label']} {r['score']:.2f}" for r in records])
            predictions.append(Prediction(drawn, {"detections": records}, inference_ms=inference_ms))
        return predictions


class SegmentationPredictor:
    """The class of every pixel: images resized to the model's input size (as its evaluation does),
    logits resized back to each image; the mask blended over the image, the share of each class listed."""

    def __init__(self, segmenter: Segmenter, names: Sequence[str], image_size: int, device: torch.device,
                 threshold: float = 0.0, alpha: float = MASK_ALPHA):
        self.segmenter, self.names, self.image_size = segmenter, list(names), image_size
        self.device, self.threshold, self.alpha = device, threshold, alpha

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> list[Prediction]:
        if self.image_size > 0:
            return self._batch(images, (self.image_size, self.image_size))
        if all(image.shape == images[0].shape for image in images):  # image_size <= 0: the images' own size
            return self._batch(images, tuple(images[0].shape[-2:]))
        return [self._batch([image], tuple(image.shape[-2:]))[0] for image in images]

    def _batch(self, images: list[torch.Tensor], size: tuple[int, ...]) -> list[Prediction]:
        start = time.perf_counter()
        batch = torch.stack([TF.resize(image, list(size), antialias=True) for image in images])
        logits = self.segmenter(batch.float().div(255).to(self.device)).float().cpu()
        inference_ms = (time.perf_counter() - start) * 1000.0 / len(images)
        return [self._one(image, scores, inference_ms) for image, scores in zip(images, logits)]

    def _one(self, image: torch.Tensor, logits: torch.Tensor, inference_ms: float) -> Prediction:
        logits = F.interpolate(logits[None], size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[0]
        confidence, labels = logits.softmax(0).max(0)
        drawn = confidence >= self.threshold
        counts = torch.bincount(labels.flatten(), minlength=len(self.names)).tolist()
        shares = {self.names[c]: round(n / labels.numel(), 4) for c, n in enumerate(counts) if n}
        record = {"classes": shares, "below_threshold": round(1.0 - float(drawn.float().mean()), 4)}
        mask = labels.to(torch.uint8) if len(self.names) <= 256 else None  # a PNG label mask holds 8 bits
        return Prediction(draw_masks(image, labels, drawn, self.names, self.alpha), record, mask, inference_ms)


def load_predictor(run: RunDir, runtime: str = "pytorch", threshold: float = 0.5, device: str = "auto") -> Predictor:
    """The run's best weights as a predictor in `runtime` (ONNX Runtime exports the run to
    export/model.onnx first when it has not been exported yet; it runs on CPU)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    task, cfg, categories = run_task(run)
    category_map = CategoryMap.from_dict(categories)
    if runtime == "pytorch":
        target = resolve_device(device)
        model, cfg, category_map = load_run_model(run, target)
        if task.contract == "segmentation":
            return SegmentationPredictor(SegmentationLogits(model).to(target), category_map.names,
                                         cfg.model.image_size, target, threshold)
        return DetectionPredictor(model, category_map, target, threshold)
    path = run.path / "export" / "model.onnx"
    if not path.exists():
        export_run(run.path, "onnx", path)
    cpu = torch.device("cpu")
    if task.contract == "segmentation":
        return SegmentationPredictor(OnnxSegmenter(path), category_map.names, cfg.model.image_size, cpu, threshold)
    return DetectionPredictor(OnnxDetector(path), category_map, cpu, threshold)


def predict_images(predictor: Predictor, images: Sequence[Path], out: Path, batch_size: int = 1,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Annotate `images` in batches of `batch_size`: <out>/<stem>.png (and masks/<stem>.png for a
    segmentation run); returns their JSON records. `progress`: a transient bar, on a terminal or in a
    notebook only (engine.progress.track)."""
    results: list[dict[str, Any]] = []
    step = max(1, batch_size)
    batches = [images[start:start + step] for start in range(0, len(images), step)]
    for paths in track(batches, f"predicting {len(images)} images", enabled=progress):
        for path, prediction in zip(paths, predictor([load_rgb(p) for p in paths])):
            write_png(prediction.image, str(out / f"{path.stem}.png"))
            record = {"file": str(path), **prediction.record}
            if prediction.mask is not None:
                (out / "masks").mkdir(exist_ok=True)
                write_png(prediction.mask[None], str(out / "masks" / f"{path.stem}.png"))
                record["mask"] = f"masks/{path.stem}.png"
            results.append(record)
    return results


def predict_path(run_dir: str | Path, input_path: str | Path, out_dir: str | Path | None = None,
                 threshold: float = 0.5, batch_size: int = 1, device: str = "auto", runtime: str = "pytorch",
                 progress: bool = True) -> Path:
    """Annotate an image or the images of a folder with a run's model; writes the pictures and
    predictions.json into `out_dir` (default runs/<name>/predict) and returns it."""
    run = RunDir.open(run_dir)
    images = list_images(Path(input_path))
    if not images:
        raise FileNotFoundError(f"{input_path}: no images found")
    predictor = load_predictor(run, runtime, threshold, device)
    out = Path(out_dir) if out_dir else run.path / "predict"
    out.mkdir(parents=True, exist_ok=True)
    results = predict_images(predictor, images, out, batch_size, progress)
    task = "segmentation" if isinstance(predictor, SegmentationPredictor) else "detection"
    write_json_atomic(out / "predictions.json", {"task": task, "threshold": threshold, "images": results})
    return out
