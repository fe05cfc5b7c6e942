"""A segmentation run in predict and export: masks drawn over images, a folder and a video; the
ONNX graph (one image in, logits at the input size out) within 1e-4 of PyTorch on a real image;
TorchScript; latency; the command line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visiondoctor.cli import main
from visiondoctor.config import load_config
from visiondoctor.data.images import load_rgb
from visiondoctor.data.segmentation import SegmentationDataset, segmentation_transforms
from visiondoctor.evaluation.speed import example_image
from visiondoctor.rundir import RunDir
from visiondoctor.tasks import pipeline
from visiondoctor.tasks.export import ExportError, SegmentationLogits, export_run
from visiondoctor.tasks.predict import predict_path
from visiondoctor.tasks.segmentation import logits_at

STREETS_64 = ["data.synth=streets", "data.synth_images=8", "data.synth_options={num_val: 4, num_test: 4, image_size: 64}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [*STREETS_64, "task=segmentation", "model.image_size=64", "train.epochs=1",
                             "train.batch_size=4", "train.warmup_steps=1", "train.monitors=false",
                             f"output_dir={out}", "name=seg"])
    with pytest.MonkeyPatch.context() as patch:  # the report is not what these tests look at (and it is slow)
        patch.setattr(pipeline, "build_report", lambda run: None)
        return pipeline.train(pipeline.task_for(cfg), cfg).path


@pytest.fixture(scope="module")
def test_images(run) -> list[Path]:
    folder = next((run.parent / "_data").glob("streets_*")) / "test" / "images" / "test" / "synth"
    return sorted(folder.glob("*.png"))


@pytest.fixture(scope="module")
def model(run) -> torch.nn.Module:
    return pipeline.load_run_model(RunDir.open(run), torch.device("cpu"))[0]


def num_classes(run: Path) -> int:
    return json.loads((run / "categories.json").read_text())["num_classes"]


def test_predict_folder_blends_the_masks_the_evaluation_scores(run, test_images, model, tmp_path):
    out = predict_path(run, test_images[0].parent, tmp_path / "pred", threshold=0.0, batch_size=3, device="cpu",
                       progress=False)
    result = json.loads((out / "predictions.json").read_text())
    assert result["task"] == "segmentation" and len(result["images"]) == len(test_images) == 4
    task, cfg, categories = pipeline.run_task(RunDir.open(run))
    index = task.load_data(cfg, categories).split("test")
    dataset = SegmentationDataset(index, segmentation_transforms(False, cfg.model.image_size), resize_mask=False)
    for i, record in enumerate(result["images"]):
        assert Path(record["file"]).name == index.records[i].path.name
        assert sum(record["classes"].values()) == pytest.approx(1.0, abs=1e-3) and record["below_threshold"] == 0
        image = load_rgb(test_images[i])
        drawn = load_rgb(out / f"{test_images[i].stem}.png")
        mask = load_rgb(out / record["mask"])[0]
        assert drawn.shape == image.shape and not torch.equal(drawn, image)  # the masks are blended in
        with torch.no_grad():  # the evaluation's own path: its transforms, logits at the mask's size
            expected = logits_at(model, dataset[i][0][None], tuple(image.shape[-2:])).argmax(1)[0]
        assert torch.equal(mask.long(), expected)
        assert set(record["classes"]) <= set(categories["names"][:num_classes(run)])


def test_threshold_leaves_uncertain_pixels_uncoloured(run, test_images, tmp_path):
    out = predict_path(run, test_images[0], tmp_path, threshold=1.01, progress=False)
    record = json.loads((out / "predictions.json").read_text())["images"][0]
    assert record["below_threshold"] == 1.0
    assert torch.equal(load_rgb(out / f"{test_images[0].stem}.png"), load_rgb(test_images[0]))


def test_predict_video_of_a_segmentation_run(run, test_images, tmp_path):
    pytest.importorskip("av")
    from visiondoctor.data.video_io import read_frames, write_video
    from visiondoctor.tasks.video import predict_video

    frames = [load_rgb(p) for p in test_images] * 2
    clip = write_video(tmp_path / "street.mp4", frames, fps=4)
    result = predict_video(run, clip, tmp_path / "annotated.mp4", threshold=0.0, progress=False, device="cpu")
    assert result.frames == len(frames) == len(list(read_frames(result.video)))
    report = json.loads(result.json.read_text())
    assert len(report["categories"]) >= num_classes(run)
    assert all(sum(f["classes"].values()) == pytest.approx(1.0, abs=1e-3) for f in report["frames"])


@pytest.fixture(scope="module")
def onnx_model(run) -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return export_run(run, "onnx")  # checks the logits against PyTorch on the run's first evaluated image


def test_onnx_logits_match_pytorch_within_1e4(run, onnx_model, model, test_images):
    from visiondoctor.tasks.export import OnnxSegmenter

    segmenter = OnnxSegmenter(onnx_model)
    assert segmenter.size == (64, 64)
    assert segmenter.metadata["visiondoctor.task"] == "segmentation" and segmenter.categories()["names"]
    for path in test_images:
        x = example_image(64, load_rgb(path))
        with torch.no_grad():
            reference = SegmentationLogits(model)(x[None])[0]
        logits = segmenter.logits(x)
        assert logits.shape == reference.shape == (num_classes(run), 64, 64)
        assert (logits - reference).abs().max() <= 1e-4


def test_export_refuses_a_graph_that_does_not_match(run, onnx_model, test_images):
    from visiondoctor.tasks.export import check_logits

    task, cfg, categories = pipeline.run_task(RunDir.open(run))
    other = task.build_model(pipeline.with_weights_flags(cfg, False, False), categories, None).eval()  # other weights
    with pytest.raises(ExportError, match="differ from PyTorch"):
        check_logits(other, onnx_model, load_rgb(test_images[0]))


def test_onnxruntime_predictions_agree_with_pytorch(run, onnx_model, test_images, tmp_path):
    ours = predict_path(run, test_images[0].parent, tmp_path / "pt", threshold=0.0, progress=False)
    theirs = predict_path(run, test_images[0].parent, tmp_path / "ort", threshold=0.0, runtime="onnxruntime",
                          progress=False)
    for path in test_images:
        a, b = (load_rgb(folder / "masks" / f"{path.stem}.png") for folder in (ours, theirs))
        assert (a == b).float().mean() >= 0.999


def test_torchscript_export_and_latency(run, model, test_images, tmp_path):
    pytest.importorskip("onnxruntime")
    from visiondoctor.tasks.speed import measure_run

    scripted = torch.jit.load(str(export_run(run, "torchscript", tmp_path)))
    x = example_image(64, load_rgb(test_images[0]))
    with torch.no_grad():
        assert (scripted(x) - SegmentationLogits(model)(x[None])[0]).abs().max() <= 1e-5
    latency = json.loads(measure_run(run, runs=1, warmup=0).read_text())
    assert set(latency["latency_ms"]) == {"pytorch", "torchscript", "onnxruntime"}, latency["skipped"]
    assert latency["flops"] > 0 and latency["device"] == "cpu"


def test_command_line_predicts_and_exports_a_segmentation_run(run, test_images, tmp_path):
    pytest.importorskip("onnxruntime")
    assert main(["predict", str(run), str(test_images[0].parent), "--out", str(tmp_path / "p"), "--batch-size", "2",
                 "--device", "cpu", "--threshold", "0"]) == 0
    assert len(list((tmp_path / "p" / "masks").glob("*.png"))) == 4
    assert main(["export", str(run), "--out", str(tmp_path / "e"), "--device", "cpu"]) == 0
    assert (tmp_path / "e" / "model.onnx").exists()
