"""`visiondoctor predict RUN video.mp4 --out annotated.mp4` (or a folder of videos).

Each frame goes through the run's detector one at a time, as in a live stream; the annotated
video shows boxes with class and score and the running FPS (frames per second over the last
`FPS_WINDOW` frames, end to end: decoding, inference, drawing). Beside the video a JSON lists the
detections of every frame (`<out>.json`).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from visiondoctor.data.samples import CategoryMap
from visiondoctor.data.video_io import (
    VIDEO_SUFFIXES,
    VideoError,
    VideoWriter,
    is_video,
    list_videos,
    read_frames,
    video_info,
)
from visiondoctor.engine.trainer import resolve_device
from visiondoctor.rundir import RunDir, write_json_atomic
from visiondoctor.tasks.export import OnnxDetector, export_run
from visiondoctor.tasks.pipeline import load_run_model
from visiondoctor.tasks.predict import annotate, list_images, predict_path

log = logging.getLogger(__name__)

FPS_WINDOW = 30
RUNTIMES = ("pytorch", "onnxruntime")
Detector = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class VideoPrediction:
    video: Path  # the annotated video
    json: Path  # per-frame detections
    frames: int
    mean_fps: float


def load_detector(run: RunDir, runtime: str = "pytorch") -> tuple[Detector, CategoryMap, torch.device]:
    """The run's best weights as a callable detector in `runtime` (ONNX Runtime exports the run to
    export/model.onnx first when it has not been exported yet)."""
    if runtime == "pytorch":
        device = resolve_device("auto")
        model, _, category_map = load_run_model(run, device)
        return model, category_map, device
    if runtime == "onnxruntime":
        path = run.path / "export" / "model.onnx"
        if not path.exists():
            export_run(run.path, "onnx", path)
        return OnnxDetector(path), CategoryMap.from_dict(run.read_json("categories.json")), torch.device("cpu")
    raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")


def detection_records(det: dict[str, torch.Tensor], category_map: CategoryMap, threshold: float) -> list[dict[str, Any]]:
    """The detections at or above `threshold` as JSON records (xyxy pixels, label name, dataset id)."""
    keep = det["scores"] >= threshold
    return [{"bbox_xyxy": [round(v, 2) for v in box], "score": round(score, 4), "label": category_map.label_name(label),
             "category_id": category_map.to_dataset_id(label)}
            for box, score, label in zip(det["boxes"][keep].tolist(), det["scores"][keep].tolist(),
                                         det["labels"][keep].tolist())]


def draw_caption(frame: torch.Tensor, text: str) -> torch.Tensor:
    """`text` on a dark box in the top-left corner of a uint8 [3, H, W] frame."""
    image = Image.fromarray(frame.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, min(image.size) // 16))
    left, top, right, bottom = draw.textbbox((4, 2), text, font=font)
    draw.rectangle([0, 0, right + 4, bottom + 2], fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 0), font=font)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[fps]:.1f} FPS"), TimeElapsedColumn(), disable=not enabled)


@torch.no_grad()
def annotate_video(detector: Detector, category_map: CategoryMap, video_path: Path, out_path: Path, threshold: float,
                   device: torch.device, progress: bool = True, runtime: str = "pytorch") -> VideoPrediction:
    """Detect on every frame of `video_path`; write the annotated video and its per-frame JSON."""
    info = video_info(video_path)
    json_path = out_path.with_suffix(".json")
    frames: list[dict[str, Any]] = []
    window: deque[float] = deque(maxlen=FPS_WINDOW)
    started = last = time.perf_counter()
    with VideoWriter(out_path, info.fps) as writer, _progress(progress) as bar:
        task = bar.add_task(video_path.name, total=info.frames, fps=0.0)
        for index, frame in enumerate(read_frames(video_path)):
            tick = time.perf_counter()
            det = detector([frame.float().div(255).to(device)])[0]
            det = {k: v.detach().cpu() for k, v in det.items()}
            inference_ms = (time.perf_counter() - tick) * 1000.0
            records = detection_records(det, category_map, threshold)
            keep = det["scores"] >= threshold
            drawn = annotate(frame, det["boxes"][keep], [f"{r['label']} {r['score']:.2f}" for r in records])
            now = time.perf_counter()
            window.append(now - last)
            last = now
            fps = len(window) / max(1e-9, sum(window))
            writer.write(draw_caption(drawn, f"{fps:.1f} FPS"))
            frames.append({"frame": index, "time_s": round(index / info.fps, 4), "inference_ms": round(inference_ms, 2),
                           "detections": records})
            bar.update(task, advance=1, fps=fps)
    if not frames:
        raise VideoError(f"{video_path}: no frames decoded")
    mean_fps = len(frames) / max(1e-9, time.perf_counter() - started)
    write_json_atomic(json_path, {
        "video": str(video_path), "annotated": str(out_path), "threshold": threshold, "runtime": runtime,
        "source_fps": info.fps, "categories": list(category_map.names), "num_frames": len(frames), "mean_fps": round(mean_fps, 2),
        "mean_inference_ms": round(float(np.mean([f["inference_ms"] for f in frames])), 2),
        "frames": frames})
    log.info("%s: %d frames, %.1f FPS -> %s", video_path, len(frames), mean_fps, out_path)
    return VideoPrediction(out_path, json_path, len(frames), mean_fps)


def _video_out(video: Path, out: str | Path | None, default_dir: Path) -> Path:
    if out is None:
        return default_dir / f"{video.stem}_annotated.mp4"
    out = Path(out)
    return out if is_video(out) else out / f"{video.stem}_annotated.mp4"


def predict_video(run_dir: str | Path, video_path: str | Path, out_path: str | Path | None = None,
                  threshold: float = 0.5, runtime: str = "pytorch", progress: bool = True) -> VideoPrediction:
    """Annotate one video with a run's detector. `out_path`: a video file (.mp4, ...) or a folder;
    default runs/<name>/predict/<stem>_annotated.mp4. The JSON is written beside the video."""
    video = Path(video_path)
    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such video")
    run = RunDir.open(run_dir)
    detector, category_map, device = load_detector(run, runtime)
    return annotate_video(detector, category_map, video, _video_out(video, out_path, run.path / "predict"), threshold,
                          device, progress, runtime)


def predict_videos(run_dir: str | Path, folder: str | Path, out_dir: str | Path | None = None, threshold: float = 0.5,
                   runtime: str = "pytorch", progress: bool = True) -> list[VideoPrediction]:
    """Annotate every video under `folder` (the model is loaded once); outputs keep the folder layout."""
    folder = Path(folder)
    videos = list_videos(folder)
    if not videos:
        raise FileNotFoundError(f"{folder}: no videos found (suffixes {', '.join(sorted(VIDEO_SUFFIXES))})")
    run = RunDir.open(run_dir)
    detector, category_map, device = load_detector(run, runtime)
    out = Path(out_dir) if out_dir else run.path / "predict"
    results = []
    for video in videos:
        target = (out / video.relative_to(folder).parent / f"{video.stem}_annotated.mp4" if folder.is_dir()
                  else _video_out(video, out, out))
        results.append(annotate_video(detector, category_map, video, target, threshold, device, progress, runtime))
    return results


def predict_media(run_dir: str | Path, input_path: str | Path, out: str | Path | None = None,
                  threshold: float = 0.5, runtime: str = "pytorch") -> list[Path]:
    """What `visiondoctor predict` does with any input: a video file -> annotated video; a folder ->
    its videos annotated and its images through predict_path; an image -> predict_path. Returns the
    written outputs (annotated videos and/or the image output folder)."""
    path = Path(input_path)
    if path.is_file() and is_video(path):
        return [predict_video(run_dir, path, out, threshold, runtime).video]
    written: list[Path] = []
    if path.is_dir() and list_videos(path):
        written += [r.video for r in predict_videos(run_dir, path, out, threshold, runtime)]
        if not list_images(path):
            return written
    if runtime != "pytorch":
        raise ValueError("images are predicted with the PyTorch runtime only")
    written.append(predict_path(run_dir, path, out, threshold))
    return written

