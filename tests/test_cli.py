"""The command line, end to end on tiny data: synth -> validate -> train -> eval -> predict -> report."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from visiondoctor import __version__
from visiondoctor.cli import build_parser, main
from visiondoctor.data.synth import generate

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "bccd"
TINY = ["--set", "data.synth_images=24",
        "--set", "data.synth_options={num_val: 8, num_test: 4, image_size: 96, min_size: 12, max_size: 48}",
        "--set", "model.kwargs={anchor_min_ratio: 0.15}", "--set", "train.warmup_steps=2",
        "--set", "train.monitors=false"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    rc = main(["train", "--synth", "shapes", "--name", "tiny", "--output-dir", str(out), "--epochs", "2",
               "--batch-size", "8", "--image-size", "96", *TINY])
    assert rc == 0
    return out / "tiny"


def test_every_command_has_help(capsys):
    parser = build_parser()
    for cmd in ("demo", "train", "eval", "predict", "report", "data", "models"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_train_writes_a_complete_run_directory(trained_run):
    for name in ("config.yaml", "history.csv", "metrics.json", "predictions.json", "categories.json", "gt.json",
                 "report.html", "diagnosis.json", "data_summary.json"):
        assert (trained_run / name).exists(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for key in ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100",
                "per_class", "num_images", "num_detections"):
        assert key in metrics, key
    assert metrics["num_images"] == 8  # the whole validation split
    gt_cats = {c["id"] for c in json.loads((trained_run / "gt.json").read_text())["categories"]}
    preds = json.loads((trained_run / "predictions.json").read_text())
    assert preds and {p["category_id"] for p in preds} <= gt_cats  # dataset ids, never label 0
    header = (trained_run / "history.csv").read_text().splitlines()[0]
    assert "loss_classification" in header and "loss_bbox_regression" in header


def test_eval_on_a_subset_is_recorded(trained_run, capsys):
    assert main(["eval", str(trained_run), "--split", "test", "--max-images", "2"]) == 0
    metrics = json.loads((trained_run / "metrics_test.json").read_text())  # the split's own file (val's untouched)
    assert metrics["subset"] == {"evaluated_images": 2, "total_images": 4}


def test_predict_folder_and_report_rebuild(trained_run, tmp_path):
    images = next((trained_run.parent / "_data").glob("shapes_*")) / "test"
    out = tmp_path / "pred"
    assert main(["predict", str(trained_run), str(images), "--out", str(out), "--threshold", "0.0"]) == 0
    result = json.loads((out / "predictions.json").read_text())
    assert len(result["images"]) == 4 and len(list(out.glob("*.png"))) == 4
    (trained_run / "report.html").unlink()
    assert main(["report", str(trained_run)]) == 0
    assert (trained_run / "report.html").exists()


def test_resume_of_a_finished_run_keeps_its_step(trained_run):
    from visiondoctor.engine.checkpoint import load_latest

    steps_before = load_latest(trained_run / "checkpoints")[1]["step"]
    rc = main(["train", "--synth", "shapes", "--name", "tiny", "--output-dir", str(trained_run.parent),
               "--epochs", "2", "--batch-size", "8", "--image-size", "96", "--resume", *TINY])
    assert rc == 0
    assert load_latest(trained_run / "checkpoints")[1]["step"] == steps_before


def test_bad_annotation_file_exits_nonzero_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    assert main(["data", "validate", str(bad)]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    rc = main(["train", "--synth", "shapes", "--model", "no_such_model", "--output-dir", str(tmp_path), *TINY])
    assert rc == 2
    assert "no_such_model" in capsys.readouterr().err


def test_bad_config_override_is_a_clear_error(capsys):
    assert main(["train", "--set", "train.lrr=0.1"]) == 2
    assert "lrr" in capsys.readouterr().err


def test_config_names_a_shipped_preset_or_a_file(tmp_path, capsys):
    from visiondoctor.config import load_config

    assert load_config("demo").name == "demo" and load_config("text_query").model.name == "text_query_dense"
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    assert load_config(tmp_path / "mine.yaml").name == "mine"
    assert main(["train", "--config", "no_such_preset"]) == 2
    assert "no_such_preset" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/datasets/bccd not present")
def test_bccd_validates_and_converts(tmp_path, capsys):
    assert main(["data", "validate", str(SHARED), "--split", "train"]) == 0
    assert "4947 boxes" in capsys.readouterr().out
    assert main(["data", "convert", str(SHARED), "--split", "test", "--out", str(tmp_path / "test.json")]) == 0
    converted = json.loads((tmp_path / "test.json").read_text())
    assert len(converted["images"]) == 10 and len(converted["annotations"]) == 221


def test_version_and_every_option_shows_its_default(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"visiondoctor {__version__}"

    def parsers(parser):
        yield parser.prog, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    missing = []
    for prog, parser in parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if (not action.option_strings or action.required
                    or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
                continue
            text = formatter._get_help_string(action) or ""
            if not action.help or "(default" not in text:
                missing.append(f"{prog} {action.option_strings[-1]}: {text!r}")
    assert not missing, "options without help or default:\n" + "\n".join(missing)
    for command in ("train", "eval", "predict", "export", "speed", "diagnose"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert "--device" in capsys.readouterr().out


def test_eval_on_another_dataset_of_the_same_classes(trained_run, tmp_path, capsys):
    other = tmp_path / "other"
    generate("shapes", other, num_images=4, seed=7, num_val=2, num_test=3, image_size=96)
    assert main(["eval", str(trained_run), "--data", str(other), "--split", "test", "--batch-size", "2",
                 "--device", "cpu"]) == 0
    assert json.loads((trained_run / "metrics_test.json").read_text())["num_images"] == 3
    assert json.loads((trained_run / "gt_test.json").read_text())["image_root"] == str(other / "test")

    different = tmp_path / "different"
    generate("shapes", different, num_images=4, seed=7, num_val=2, num_test=3, image_size=96,
             classes=("circle", "square", "triangle", "star", "hexagon"))
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--data", str(different), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "different" in err and "hexagon" in err and "same classes" in err


def test_predict_in_batches_on_a_device(trained_run, tmp_path):
    images = next((trained_run.parent / "_data").glob("shapes_*")) / "test"
    one, batched = tmp_path / "one", tmp_path / "batched"
    assert main(["predict", str(trained_run), str(images), "--out", str(one), "--threshold", "0.2"]) == 0
    assert main(["predict", str(trained_run), str(images), "--out", str(batched), "--threshold", "0.2",
                 "--batch-size", "3", "--device", "cpu"]) == 0
    first, second = (json.loads((d / "predictions.json").read_text())["images"] for d in (one, batched))
    assert [r["file"] for r in first] == [r["file"] for r in second]
    for a, b in zip(first, second):  # SSD resizes every image to one size: batching changes nothing
        assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
        for da, db in zip(a["detections"], b["detections"]):
            assert da["bbox_xyxy"] == pytest.approx(db["bbox_xyxy"], abs=0.05)
