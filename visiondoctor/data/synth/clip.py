"""A short deterministic video of shapes moving over a gradient, for tests and demos of video
prediction (written with the same writer the predictions use)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from visiondoctor.data.video_io import write_video


def shapes_frames(num_frames: int = 12, size: int = 96, seed: int = 0) -> list[torch.Tensor]:
    """`num_frames` uint8 [3, size, size] frames: a circle and a square crossing the image on
    straight lines (positions are a function of the frame index, so the clip is deterministic)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 160, size, dtype=np.float32)
    background = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1).astype(np.uint8)
    colours = [tuple(int(c) for c in rng.integers(180, 256, 3)) for _ in range(2)]
    side = max(8, size // 4)
    frames = []
    for t in range(num_frames):
        phase = t / max(1, num_frames - 1)
        image = Image.fromarray(background.copy())
        draw = ImageDraw.Draw(image)
        x = phase * (size - side)
        draw.ellipse([x, size * 0.15, x + side, size * 0.15 + side], fill=colours[0])
        y = (1 - phase) * (size - side)
        draw.rectangle([size * 0.6, y, size * 0.6 + side, y + side], fill=colours[1])
        frames.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())
    return frames


def generate_clip(out: str | Path, num_frames: int = 12, size: int = 96, fps: float = 12.0, seed: int = 0) -> Path:
    """Write the clip to `out` (format from the suffix, e.g. .mp4) and return the path."""
    return write_video(out, shapes_frames(num_frames, size, seed), fps)
