"""Video frames in and out, through PyAV (FFmpeg).

torchvision's own video reading (read_video / VideoReader) is gone from the torchvision this
project runs on, so PyAV — the library torchvision used underneath — is used directly. Frames are
uint8 RGB tensors [3, H, W], like images everywhere else in the project.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Iterable, Iterator

import torch

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg"}
VIDEO_HINT = "video support needs PyAV: pip install visiondoctor[video]  (or: pip install av)"


class VideoError(RuntimeError):
    pass


def _av():
    try:
        import av  # deferred: the optional `video` extra (PyAV)
    except ImportError as exc:
        raise ImportError(f"{VIDEO_HINT} ({exc})") from exc
    return av


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def list_videos(path: str | Path) -> list[Path]:
    """The video itself, or the videos in a folder (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path] if is_video(path) else []
    return sorted(p for p in path.rglob("*") if p.is_file() and is_video(p))


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int | None  # from the container header; None when it does not say
    width: int
    height: int


def video_info(path: str | Path) -> VideoInfo:
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate or Fraction(25)
            return VideoInfo(float(rate), int(stream.frames) or None, stream.codec_context.width,
                             stream.codec_context.height)
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: cannot open video ({exc})") from None


def read_frames(path: str | Path) -> Iterator[torch.Tensor]:
    """Decode the first video stream frame by frame as uint8 RGB [3, H, W] tensors."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            for index, frame in enumerate(container.decode(video=0)):
                try:
                    array = frame.to_ndarray(format="rgb24")
                except (ValueError, av.error.FFmpegError) as exc:
                    raise VideoError(f"{path}: frame {index}: cannot convert to RGB ({exc})") from None
                yield torch.from_numpy(array).permute(2, 0, 1).contiguous()
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: cannot decode video ({exc})") from None


class VideoWriter:
    """Encode uint8 RGB [3, H, W] frames (all the same size) into a video file: H.264 for .mp4/.mov/
    .mkv when the FFmpeg build has it, MPEG-4 Part 2 otherwise, VP9 for .webm. Odd sizes are padded
    by one pixel (yuv420p needs even sides)."""

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self._container = None
        self._stream = None

    def __enter__(self) -> "VideoWriter":
        return self

    def _open(self, height: int, width: int) -> None:
        av = _av()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        codecs = ["libvpx-vp9"] if self.path.suffix.lower() == ".webm" else ["libx264", "mpeg4"]
        for name in codecs:
            try:
                self._stream = self._container.add_stream(name, rate=self.fps)
                break
            except (ValueError, av.error.FFmpegError):  # encoder missing from this FFmpeg build
                continue
        if self._stream is None:
            raise VideoError(f"{self.path}: no encoder among {codecs} in this FFmpeg build")
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"

    def write(self, frame: torch.Tensor) -> None:
        av = _av()
        if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[0] != 3:
            raise ValueError(f"{self.path}: frames must be uint8 [3, H, W], got {tuple(frame.shape)} {frame.dtype}")
        if self._stream is None:
            self._open(frame.shape[1], frame.shape[2])
        h, w = frame.shape[1:]
        if (h + h % 2, w + w % 2) != (self._stream.height, self._stream.width):
            raise ValueError(f"{self.path}: frame of {w}x{h} in a video of {self._stream.width}x{self._stream.height}")
        if h % 2:
            frame = torch.cat([frame, frame[:, -1:]], dim=1)
        if w % 2:
            frame = torch.cat([frame, frame[:, :, -1:]], dim=2)
        video_frame = av.VideoFrame.from_ndarray(frame.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
        self._container.mux(self._stream.encode(video_frame))

    def close(self) -> None:
        if self._container is not None:
            if self._stream is not None:
                self._container.mux(self._stream.encode())  # flush the encoder
            self._container.close()
            self._container = None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def write_video(path: str | Path, frames: Iterable[torch.Tensor], fps: float) -> Path:
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)
