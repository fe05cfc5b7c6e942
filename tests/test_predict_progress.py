"""`visiondoctor predict` on a folder of images and on a video draws the run's transient progress bar
(engine.progress.track) on a terminal, and nothing into a file, a pipe or with progress=False."""
from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import rich
import torch
from torchvision.io import write_png

from visiondoctor.data.synth.clip import generate_clip
from visiondoctor.tasks.predict import Prediction, predict_images
from visiondoctor.tasks.video import annotate_video


class Unchanged:
    """A predictor that returns each image as its own annotation (the bar is what is tested)."""

    device = torch.device("cpu")
    names = ("thing",)

    def __call__(self, images: list[torch.Tensor]) -> list[Prediction]:
        return [Prediction(image, {"detections": []}) for image in images]


@contextmanager
def console_into(terminal: bool, monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """rich's global console (the one the bars draw on) writing into a buffer, as a terminal or not."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    out = io.StringIO()
    rich.reconfigure(file=out, force_terminal=terminal, force_jupyter=False)
    try:
        yield out
    finally:
        rich.reconfigure()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        write_png(torch.full((3, 8, 8), 40 * i, dtype=torch.uint8), str(images / f"{i}.png"))
    return images


@pytest.mark.parametrize("terminal, progress, drawn", [(True, True, True), (True, False, False), (False, True, False)])
def test_predicting_a_folder_draws_a_bar_on_a_terminal_only(folder, tmp_path, monkeypatch, terminal, progress, drawn):
    out = tmp_path / "out"
    out.mkdir()
    images = sorted(folder.glob("*.png"))
    with console_into(terminal, monkeypatch) as console_text:
        records = predict_images(Unchanged(), images, out, batch_size=2, progress=progress)
    assert [r["file"] for r in records] == [str(p) for p in images]
    assert ("predicting 3 images" in console_text.getvalue()) is drawn
    if not drawn:
        assert console_text.getvalue() == ""


@pytest.mark.parametrize("progress", [True, False])
def test_predicting_a_video_draws_a_bar_over_its_frames(tmp_path, monkeypatch, progress):
    pytest.importorskip("av")
    clip = generate_clip(tmp_path / "moving.mp4", num_frames=6, size=32)
    with console_into(True, monkeypatch) as console_text:
        result = annotate_video(Unchanged(), clip, tmp_path / "annotated.mp4", threshold=0.5, progress=progress)
    assert result.frames == 6
    assert ("predicting moving.mp4" in console_text.getvalue()) is progress
