"""Video prediction on a generated clip: one annotated frame and one JSON entry per input frame."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("av")

from tinyruns import train_tiny_run  # noqa: E402
from visiondoctor.data.synth.clip import generate_clip, shapes_frames  # noqa: E402
from visiondoctor.data.video_io import VideoError, read_frames, video_info, write_video  # noqa: E402
from visiondoctor.tasks.video import predict_media, predict_video, predict_videos  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("runs"), "ssdlite320_mobilenet_v3_large", epochs=1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return generate_clip(tmp_path_factory.mktemp("clips") / "moving.mp4", num_frames=12, size=96)


def test_generated_clip_round_trips(clip):
    frames = list(read_frames(clip))
    assert len(frames) == 12 and frames[0].shape == (3, 96, 96)
    assert video_info(clip).fps == pytest.approx(12.0)
    assert (frames[0].float() - frames[-1].float()).abs().mean() > 1  # the shapes move


def test_predict_video_writes_every_frame_and_its_detections(run, clip, tmp_path):
    result = predict_video(run, clip, tmp_path / "annotated.mp4", threshold=0.0, progress=False)
    assert result.video == tmp_path / "annotated.mp4" and result.frames == 12
    annotated = list(read_frames(result.video))
    assert len(annotated) == 12 and annotated[0].shape == (3, 96, 96)
    report = json.loads(result.json.read_text())
    assert report["num_frames"] == 12 and [f["frame"] for f in report["frames"]] == list(range(12))
    categories = set(json.loads((run / "categories.json").read_text())["names"])
    detections = [d for f in report["frames"] for d in f["detections"]]
    assert detections, "threshold 0 keeps every detection the model returns"
    for d in detections:
        x1, y1, x2, y2 = d["bbox_xyxy"]
        assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 96 and 0 <= d["score"] <= 1 and d["label"] in categories
    assert report["mean_fps"] > 0


def test_threshold_filters_detections(run, clip, tmp_path):
    result = predict_video(run, clip, tmp_path, threshold=1.01, progress=False)
    assert result.video == tmp_path / "moving_annotated.mp4"
    frames = json.loads(result.json.read_text())["frames"]
    assert len(frames) == 12 and all(f["detections"] == [] for f in frames)


def test_folder_of_videos_keeps_its_layout(run, tmp_path):
    folder = tmp_path / "videos"
    generate_clip(folder / "a.mp4", num_frames=4, size=64)
    write_video(folder / "sub" / "b.avi", shapes_frames(5, 65, seed=1), fps=5)  # odd size: padded to even
    results = predict_videos(run, folder, tmp_path / "out", threshold=0.5, progress=False)
    assert [r.video for r in results] == [tmp_path / "out" / "a_annotated.mp4", tmp_path / "out" / "sub" / "b_annotated.mp4"]
    assert [r.frames for r in results] == [4, 5]
    assert [len(list(read_frames(r.video))) for r in results] == [4, 5]


def test_predict_media_dispatches_videos_and_images(run, clip, tmp_path):
    from torchvision.io import write_png

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    write_png(shapes_frames(1, 64)[0], str(folder / "still.png"))
    written = predict_media(run, folder, tmp_path / "out", threshold=0.5)
    assert (tmp_path / "out" / "clip_annotated.mp4") in written and (tmp_path / "out" / "clip_annotated.json").exists()
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["images"][0]["file"].endswith("still.png")


def test_unreadable_video_is_named(run, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(VideoError, match="broken.mp4"):
        predict_video(run, bad, tmp_path / "o.mp4", progress=False)
