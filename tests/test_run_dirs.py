"""Runs never mix (a second run of a name gets its own folder; another split's evaluation its own files), and a
finished run rebuilds the model it trained: fitted priors (priors.json) and the weights it started from."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tinyruns import train_tiny_run
from visiondoctor.cli import main
from visiondoctor.config import load_config
from visiondoctor.engine.checkpoint import load_latest
from visiondoctor.models.anchor_fit import prior_params
from visiondoctor.rundir import RunDir, split_file, unused_run_dir
from visiondoctor.tasks.pipeline import claim_run_name, evaluate_run, load_run_model

MODEL = "ssdlite_mobilenet_v3_small"  # the cheapest detector with default boxes; its priors get refitted at 96 px


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same config trained twice under one name."""
    out = tmp_path_factory.mktemp("runs")
    first = train_tiny_run(out, MODEL, epochs=1)
    before = _digests(first)
    second = train_tiny_run(out, MODEL, epochs=1)
    assert _digests(first) == before  # the second run wrote nothing into the first
    return first, second


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_same_name_twice_keeps_both_runs(runs):
    first, second = runs
    assert (first.name, second.name) == (MODEL, f"{MODEL}-2")
    for run in runs:
        assert (run / "metrics.json").exists() and load_latest(run / "checkpoints") is not None
    assert load_config(second / "config.yaml").name == f"{MODEL}-2"


def test_run_names_are_numbered_unless_the_folder_may_be_reused(tmp_path: Path):
    assert unused_run_dir(tmp_path / "run") == tmp_path / "run"
    (tmp_path / "run").mkdir()
    (tmp_path / "run-2").mkdir()
    assert unused_run_dir(tmp_path / "run") == tmp_path / "run-3"
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=run"])
    assert claim_run_name(cfg).name == "run-3"
    assert claim_run_name(cfg, reuse=True).name == "run"  # --resume, --exist-ok
    assert (split_file("metrics.json", "val"), split_file("metrics.json", "test"),
            split_file("segmentation_worst.npz", "test")) == ("metrics.json", "metrics_test.json",
                                                               "segmentation_worst_test.npz")


def test_eval_on_the_test_split_leaves_the_validation_files_untouched(runs):
    run = runs[1]
    before = _digests(run)
    assert main(["eval", str(run), "--split", "test"]) == 0
    after = _digests(run)
    changed = {name for name in before if before[name] != after.get(name)}
    assert changed <= {"report.html"}, changed  # metrics.json, predictions.json, gt.json, ... byte-identical
    for name in ("metrics.json", "predictions.json", "gt.json", "pr_curves.json", "errors.json", "diagnosis.json"):
        assert split_file(name, "test") in after, name
    test_metrics = json.loads((run / "metrics_test.json").read_text())
    assert test_metrics["split"] == "test" and test_metrics["num_images"] == 2
    assert json.loads((run / "metrics.json").read_text())["split"] == "val"
    assert not [p for p in run.iterdir() if p.name.startswith(".eval-")]  # the scratch copy is gone
    report = (run / "report.html").read_text()
    assert "metrics_test.json" in report and "Key metrics on the val split" in report


def test_a_runs_eval_rebuilds_the_fitted_model(runs):
    run = runs[0]
    priors = json.loads((run / "priors.json").read_text())
    assert priors["refit"] and priors["bpr_after"] > priors["bpr_before"]
    model, _, _ = load_run_model(RunDir.open(run), torch.device("cpu"))
    assert prior_params(model.anchor_generator) == priors["generators"][0]["after"]
    trained = load_latest(run / "checkpoints" / "best")[1]["model"]
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in trained.items()}
    predictions = (run / "predictions.json").read_bytes()
    evaluate_run(run, "val")  # rebuilds the model from config.yaml, priors.json and the best checkpoint
    assert (run / "predictions.json").read_bytes() == predictions  # the same model: the same detections


def test_the_run_records_its_weights_and_priors_in_the_report(runs):
    run = runs[0]
    weights = json.loads((run / "weights.json").read_text())
    assert weights["used"] == "none" and weights["requested"] == {"pretrained": False, "pretrained_backbone": False}
    report = (run / "report.html").read_text()
    assert "trained from scratch" in report and "after the priors were refitted" in report
