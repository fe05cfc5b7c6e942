"""Export of trained runs: ONNX Runtime gives PyTorch's detections (boxes, scores, labels) for a
one-stage (SSDLite) and a two-stage (Faster R-CNN) model; TorchScript; latency.json for compare."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from tinyruns import SMALL_RCNN, train_tiny_run  # noqa: E402
from visiondoctor.data.images import load_rgb  # noqa: E402
from visiondoctor.rundir import RunDir  # noqa: E402
from visiondoctor.tasks.pipeline import load_run_model  # noqa: E402
from visiondoctor.tasks.export import OnnxDetector, export_run, parity  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    return {"ssdlite": train_tiny_run(out, "ssdlite320_mobilenet_v3_large", extra=["model.kwargs={anchor_min_ratio: 0.15}"]),
            "fasterrcnn": train_tiny_run(out, "fasterrcnn_mobilenet_v3_large_fpn", extra=[SMALL_RCNN])}


@pytest.fixture(scope="module")
def onnx_models(runs) -> dict[str, Path]:
    return {name: export_run(run, "onnx") for name, run in runs.items()}


def val_images(run: Path) -> list[torch.Tensor]:
    gt = json.loads((run / "gt.json").read_text())
    return [load_rgb(Path(gt["image_root"]) / im["file_name"]).float() / 255 for im in gt["images"][:2]]


def assert_parity(run: Path, onnx_model: Path, images: list[torch.Tensor]) -> None:
    model, _, _ = load_run_model(RunDir.open(run), torch.device("cpu"))
    detector = OnnxDetector(onnx_model)
    for image in images:
        with torch.no_grad():
            reference = model([image])[0]
        result = parity(reference, detector([image])[0])
        assert result.reference_count > 0, "the trained model should detect something"
        assert result.ok, result
        assert result.max_box_diff < 0.05 and result.max_score_diff <= 1e-4


def test_onnx_parity_ssdlite(runs, onnx_models):
    images = val_images(runs["ssdlite"])
    # SSD resizes every input to its fixed square size; OnnxDetector does the same outside the graph.
    stretched = torch.nn.functional.interpolate(images[0][None], size=(80, 120), mode="bilinear")[0]
    assert_parity(runs["ssdlite"], onnx_models["ssdlite"], images + [stretched])


def test_onnx_parity_faster_rcnn(runs, onnx_models):
    assert_parity(runs["fasterrcnn"], onnx_models["fasterrcnn"], val_images(runs["fasterrcnn"]))


def test_onnx_graph_carries_the_run_metadata(runs, onnx_models):
    detector = OnnxDetector(onnx_models["ssdlite"])
    assert detector.size == (96, 96)
    assert detector.metadata["visiondoctor.model"] == "ssdlite320_mobilenet_v3_large"
    assert detector.categories() == json.loads((runs["ssdlite"] / "categories.json").read_text())


def test_torchscript_export_gives_the_same_detections(runs, tmp_path):
    path = export_run(runs["ssdlite"], "torchscript", tmp_path / "ts")
    assert path == tmp_path / "ts" / "model.pt"
    scripted = torch.jit.load(str(path))
    model, _, _ = load_run_model(RunDir.open(runs["ssdlite"]), torch.device("cpu"))
    image = val_images(runs["ssdlite"])[0]
    with torch.no_grad():
        _, scripted_out = scripted([image])
        assert parity(model([image])[0], scripted_out[0], score_atol=1e-5).ok


def test_unknown_format_is_refused(runs):
    with pytest.raises(ValueError, match="onnx, torchscript"):
        export_run(runs["ssdlite"], "tflite")


def test_latency_json_feeds_the_comparison_report(runs, tmp_path):
    from visiondoctor.report.compare import build_comparison_report
    from visiondoctor.tasks.speed import measure_run

    written = measure_run(runs["ssdlite"], runs=1, warmup=0)
    latency = json.loads(written.read_text())
    assert set(latency["latency_ms"]) == {"pytorch", "torchscript", "onnxruntime"}, latency["skipped"]
    assert latency["params"] == sum(p.numel() for p in load_run_model(RunDir.open(runs["ssdlite"]),
                                                                      torch.device("cpu"))[0].parameters())
    assert latency["flops"] > 0 and latency["image_size"] == 96
    measure_run(runs["fasterrcnn"], runtimes=("pytorch",), runs=1, warmup=0)
    html = build_comparison_report([runs["ssdlite"], runs["fasterrcnn"]], tmp_path).read_text()
    assert "onnxruntime [ms/image]" in html and "torchscript [ms/image]" in html
