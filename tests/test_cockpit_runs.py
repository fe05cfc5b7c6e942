"""What a finished detection run and a finished segmentation run show (tiny real runs, TensorBoard on):
event files with per-step loss scalars, the doctor's findings as text and the worst-first predictions
as images; a report with the sections of the run's own task only, which loads in a real browser."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from browser_check import BrowserUnavailable, check_report
from tinyruns import train_tiny_run

from visiondoctor.engine.tensorboard import TensorBoardLogger
from visiondoctor.report.html import run_sections
from visiondoctor.report.sections import registered_sections
from visiondoctor.rundir import RunDir

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TENSORBOARD = ["train.tensorboard=true", "train.log_every=1"]
STREETS_64 = ["data.synth=streets", "data.synth_images=8",
              "data.synth_options={num_val: 4, num_test: 2, image_size: 64}", "task=segmentation"]
DETECTION_ONLY = {"Metrics", "Per-class AP", "Detection confusion matrix", "Precision-recall curves",
                  "Detection statistics", "Predictions beside ground truth", "Error analysis"}
SEGMENTATION_ONLY = {"Segmentation metrics", "Segmentation confusion matrix", "Worst segmented images",
                     "Anomaly segmentation"}


CLOSED: list[Path] = []  # the folders of the TensorBoard writers closed


def train_logged(out: Path, model: str, epochs: int, extra: list[str]) -> Path:
    """train_tiny_run with TensorBoard on, noting which writers were closed."""
    close = TensorBoardLogger.close

    def noted_close(logger: TensorBoardLogger) -> None:
        CLOSED.append(logger.log_dir)
        close(logger)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TensorBoardLogger, "close", noted_close)
        return train_tiny_run(out, model, epochs=epochs, extra=[*extra, *TENSORBOARD])


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory) -> Path:
    return train_logged(tmp_path_factory.mktemp("runs"), "ssdlite320_mobilenet_v3_large", 1, [])


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory) -> Path:
    # the shapes set of train_tiny_run has no masks: streets, 8 images of 64 px, in batches of 4
    return train_logged(tmp_path_factory.mktemp("runs"), "lraspp_mobilenet_v3_large", 2,
                        [*STREETS_64, "model.image_size=64", "train.batch_size=4"])


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def titles(run: Path) -> tuple[set[str], set[str]]:
    """(the report's section titles, the titles it lists as missing), from report.html itself."""
    html = (run / "report.html").read_text(encoding="utf-8")
    shown = set(re.findall(r"<h2>(.*?)</h2>", html))
    aside = re.search(r'<aside class="skipped">(.*?)</aside>', html, re.DOTALL)
    listed = set(re.findall(r"<li>(.*?):", aside.group(1))) if aside else set()
    return shown, listed


@pytest.mark.slow
@pytest.mark.parametrize("which", ["detection_run", "segmentation_run"])
def test_tensorboard_holds_per_step_losses_the_findings_and_predictions(which, request):
    run = request.getfixturevalue(which)
    assert run / "tensorboard" in CLOSED  # the run closed its writer
    acc = events(run)
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1))  # one point per step, not per epoch
    assert "train/lr" in acc.Tags()["scalars"]
    # the doctor's findings: one markdown table, at the last step
    (text,) = acc.Tensors("doctor/findings/text_summary")  # add_text's tag
    table = text.tensor_proto.string_val[0].decode("utf-8")
    assert text.step == steps[-1]
    ids = [f["id"] for f in json.loads((run / "diagnosis.json").read_text(encoding="utf-8"))]
    if ids:  # the tiny detection run has findings (its priors at 96 px), the segmentation run may have none
        assert table.startswith("| severity | id | title |\n|---|---|---|\n") and table.count("\n") == len(ids) + 1
        assert all(f"`{finding_id}`" in table for finding_id in ids)
    else:
        assert table == "The doctor ran its checks and found nothing to report."
    # the report's worst-first predictions
    assert "predictions/0" in acc.Tags()["images"]
    (image,) = acc.Images("predictions/0")
    assert image.step == steps[-1] and image.width > 100 and image.encoded_image_string.startswith(b"\x89PNG")


@pytest.mark.slow
def test_each_report_shows_the_sections_of_its_own_task_only(detection_run, segmentation_run):
    shown, listed = titles(segmentation_run)
    assert {"Segmentation metrics", "Segmentation confusion matrix", "Worst segmented images"} <= shown
    assert not (shown | listed) & DETECTION_ONLY  # no detection placeholder ("needs pr_curves.json", ...)
    assert "detection_confusion.json" not in (segmentation_run / "report.html").read_text(encoding="utf-8")
    shown, listed = titles(detection_run)
    assert {"Metrics", "Detection confusion matrix", "Predictions beside ground truth"} <= shown
    assert not (shown | listed) & SEGMENTATION_ONLY
    # the filter reads the run's task from config.yaml: a segmentation config drops the detection sections
    entries = registered_sections()
    assert {e.title for e in entries} >= DETECTION_ONLY | SEGMENTATION_ONLY
    sections, skipped = run_sections(RunDir.open(segmentation_run), entries)
    assert not {s.title for s in sections} & DETECTION_ONLY and not {s.title for s in skipped} & DETECTION_ONLY


@pytest.mark.slow
@pytest.mark.parametrize("which", ["detection_run", "segmentation_run"])
def test_the_report_of_a_real_run_loads_in_a_browser(which, request):
    run = request.getfixturevalue(which)
    try:
        problems = check_report(run / "report.html", min_images=2)
    except BrowserUnavailable as exc:
        pytest.skip(f"no headless browser: {exc}")
    assert problems == []
