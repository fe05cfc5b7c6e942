"""`visiondoctor predict RUN INPUT`: annotated images and a JSON of detections for an image or a folder."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes

from visiondoctor.data.images import load_rgb
from visiondoctor.engine.trainer import resolve_device
from visiondoctor.rundir import RunDir, write_json_atomic
from visiondoctor.tasks.pipeline import load_run_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    raise FileNotFoundError(f"{path}: no such image or folder")


def annotate(image: torch.Tensor, boxes: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Draw boxes with captions on a uint8 CHW image."""
    if len(boxes) == 0:
        return image
    width = max(1, round(min(image.shape[-2:]) / 200))
    return draw_bounding_boxes(image, boxes, labels=captions, colors="yellow", width=width)


def predict_path(run_dir: str | Path, input_path: str | Path, out_dir: str | Path | None = None,
                 threshold: float = 0.5) -> Path:
    run = RunDir.open(run_dir)
    device = resolve_device("auto")
    model, _cfg, category_map = load_run_model(run, device)
    out = Path(out_dir) if out_dir else run.path / "predict"
    out.mkdir(parents=True, exist_ok=True)
    images = list_images(Path(input_path))
    if not images:
        raise FileNotFoundError(f"{input_path}: no images found")
    results = []
    with torch.no_grad():
        for path in images:
            image = load_rgb(path)
            det = model([image.float().div(255).to(device)])[0]
            keep = det["scores"] >= threshold
            boxes, scores, labels = det["boxes"][keep].cpu(), det["scores"][keep].cpu(), det["labels"][keep].cpu()
            names = [category_map.label_name(int(l)) for l in labels]
            write_png(annotate(image, boxes, [f"{n} {s:.2f}" for n, s in zip(names, scores.tolist())]),
                      str(out / f"{path.stem}.png"))
            results.append({"file": str(path), "detections": [
                {"bbox_xyxy": [round(v, 2) for v in b], "score": round(s, 4), "label": n,
                 "category_id": category_map.to_dataset_id(int(l))}
                for b, s, n, l in zip(boxes.tolist(), scores.tolist(), names, labels.tolist())]})
    write_json_atomic(out / "predictions.json", {"threshold": threshold, "images": results})
    return out
