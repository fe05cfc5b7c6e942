"""`visiondoctor predict RUN video.mp4 --out annotated.mp4` (or a folder of videos).

Each frame goes through the run's model one at a time, as in a live stream; the annotated video
shows what a detection run finds (boxes with class and score) or a segmentation run's masks (a
colour per class, a legend), and the running FPS (frames per second over the last `FPS_WINDOW`
frames, end to end: decoding, inference, drawing). Beside the video a JSON lists the predictions of
every frame (`<out>.json`): its detections, or the share of the frame each class covers.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visiondoctor.data.video_io import (
    VIDEO_SUFFIXES,
    VideoError,
    VideoWriter,
    is_video,
    list_videos,
    read_frames,
    video_info,
)
from visiondoctor.engine.progress import track
from visiondoctor.rundir import RunDir, write_json_atomic
from visiondoctor.tasks.predict import (
    Predictor,
    draw_text_box,
    list_images,
    load_predictor,
    predict_path,
)

log = logging.getLogger(__name__)

FPS_WINDOW = 30


@dataclass(frozen=True)
class VideoPrediction:
    video: Path  # the annotated video
    json: Path  # per-frame predictions
    frames: int
    mean_fps: float


def annotate_video(predictor: Predictor, video_path: Path, out_path: Path, threshold: float, progress: bool = True,
                   runtime: str = "pytorch") -> VideoPrediction:
    """Predict on every frame of `video_path`; write the annotated video and its per-frame JSON.
    `progress`: a transient bar over the frames, on a terminal or in a notebook only."""
    info = video_info(video_path)
    json_path = out_path.with_suffix(".json")
    frames: list[dict[str, Any]] = []
    window: deque[float] = deque(maxlen=FPS_WINDOW)
    started = last = time.perf_counter()
    with VideoWriter(out_path, info.fps) as writer:
        for index, frame in enumerate(track(read_frames(video_path), f"predicting {video_path.name}",
                                            total=info.frames, enabled=progress)):
            (prediction,) = predictor([frame])
            now = time.perf_counter()
            window.append(now - last)
            last = now
            fps = len(window) / max(1e-9, sum(window))
            writer.write(draw_text_box(prediction.image, [(f"{fps:.1f} FPS", None)]))
            frames.append({"frame": index, "time_s": round(index / info.fps, 4),
                           "inference_ms": round(prediction.inference_ms, 2), **prediction.record})
    if not frames:
        raise VideoError(f"{video_path}: no frames decoded")
    mean_fps = len(frames) / max(1e-9, time.perf_counter() - started)
    write_json_atomic(json_path, {
        "video": str(video_path), "annotated": str(out_path), "threshold": threshold, "runtime": runtime,
        "source_fps": info.fps, "categories": list(predictor.names), "num_frames": len(frames),
        "mean_fps": round(mean_fps, 2), "mean_inference_ms": round(float(np.mean([f["inference_ms"] for f in frames])), 2),
        "frames": frames})
    log.info("%s: %d frames, %.1f FPS -> %s", video_path, len(frames), mean_fps, out_path)
    return VideoPrediction(out_path, json_path, len(frames), mean_fps)


def _video_out(video: Path, out: str | Path | None, default_dir: Path) -> Path:
    if out is None:
        return default_dir / f"{video.stem}_annotated.mp4"
    out = Path(out)
    return out if is_video(out) else out / f"{video.stem}_annotated.mp4"


def predict_video(run_dir: str | Path, video_path: str | Path, out_path: str | Path | None = None,
                  threshold: float = 0.5, runtime: str = "pytorch", progress: bool = True,
                  device: str = "auto") -> VideoPrediction:
    """Annotate one video with a run's model. `out_path`: a video file (.mp4, ...) or a folder;
    default runs/<name>/predict/<stem>_annotated.mp4. The JSON is written beside the video."""
    video = Path(video_path)
    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such video")
    run = RunDir.open(run_dir)
    predictor = load_predictor(run, runtime, threshold, device)
    return annotate_video(predictor, video, _video_out(video, out_path, run.path / "predict"), threshold, progress,
                          runtime)


def predict_videos(run_dir: str | Path, folder: str | Path, out_dir: str | Path | None = None, threshold: float = 0.5,
                   runtime: str = "pytorch", progress: bool = True, device: str = "auto") -> list[VideoPrediction]:
    """Annotate every video under `folder` (the model is loaded once); outputs keep the folder layout."""
    folder = Path(folder)
    videos = list_videos(folder)
    if not videos:
        raise FileNotFoundError(f"{folder}: no videos found (suffixes {', '.join(sorted(VIDEO_SUFFIXES))})")
    run = RunDir.open(run_dir)
    predictor = load_predictor(run, runtime, threshold, device)
    out = Path(out_dir) if out_dir else run.path / "predict"
    results = []
    for video in videos:
        target = (out / video.relative_to(folder).parent / f"{video.stem}_annotated.mp4" if folder.is_dir()
                  else _video_out(video, out, out))
        results.append(annotate_video(predictor, video, target, threshold, progress, runtime))
    return results


def predict_media(run_dir: str | Path, input_path: str | Path, out: str | Path | None = None,
                  threshold: float = 0.5, runtime: str = "pytorch", batch_size: int = 1,
                  device: str = "auto") -> list[Path]:
    """What `visiondoctor predict` does with any input: a video file -> annotated video; a folder ->
    its videos annotated and its images through predict_path (in batches of `batch_size`); an image ->
    predict_path. Returns the written outputs (annotated videos and/or the image output folder)."""
    path = Path(input_path)
    if path.is_file() and is_video(path):
        return [predict_video(run_dir, path, out, threshold, runtime, device=device).video]
    written: list[Path] = []
    if path.is_dir() and list_videos(path):
        written += [r.video for r in predict_videos(run_dir, path, out, threshold, runtime, device=device)]
        if not list_images(path):
            return written
    written.append(predict_path(run_dir, path, out, threshold, batch_size, device, runtime))
    return written
