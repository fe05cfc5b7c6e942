"""The HTML report and diagnosis.md, built from hand-made run directories."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from quality_runs import make_detection_run, make_segmentation_run
from visiondoctor.report import sections as section_registry
from visiondoctor.report.compare import ComparisonError, build_comparison_report
from visiondoctor.report.curves import Curve, judge
from visiondoctor.report.html import build_report
from visiondoctor.report.markdown import diagnosis_markdown
from visiondoctor.report.sections import Paragraph, Section

EVIL_CLASS = "<script>alert(1)</script>"
EVIL_FILE = "<img src=x onerror=alert(2)>.png"
MATH_CLASS = "cost$_{x"  # unbalanced mathtext: matplotlib raises on it unless `$` is escaped
CLASSES = {1: "circle", 2: EVIL_CLASS, 3: MATH_CLASS}
SECTION_TITLES = ["Summary", "Diagnosis", "Data summary", "Training curves", "Metrics", "Per-class AP",
                  "Detection confusion matrix", "Precision-recall curves", "Detection statistics", "Predictions beside ground truth", "Error analysis"]

FINDINGS = [  # deliberately not in severity order: the report must put the error first
    {"id": "data.empty-category", "severity": "info", "title": "Category RBC-WBC has no annotations",
     "evidence": {"category_id": 0, "boxes": 0}, "cause": "a supercategory exported as a category",
     "fix": "drop it or ignore it", "where": "train/_annotations.coco.json"},
    {"id": "output.detections-per-image", "severity": "warning", "title": "2400 detections per image at 0.4",
     "evidence": {"per_image_at_0.4": 2400.0, "per_image_at_0.5": 0.0}, "cause": "scores sit just under the threshold",
     "fix": "fix the classifier, not the threshold", "where": ""},
    {"id": "output.background-collapse", "severity": "error", "title": "The classifier predicts background everywhere",
     "evidence": {"fg_prob_min": 0.41, "fg_prob_max": 0.4625, "threshold": 0.5, "plot": "plots/score_hist.png"},
     "cause": "anchors were matched to ground truth at random, so no location learned to be foreground",
     "fix": "match anchors by IoU (torchvision's Matcher)", "where": "model.head"},
]


def write_history(path: Path, epochs: int = 4, steps_per_epoch: int = 10) -> None:
    rng = np.random.default_rng(0)
    cols = ["epoch", "step", "split", "lr", "loss", "loss_classification", "loss_bbox_regression", "images_per_s", "grad_norm",
            "map", "map50"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        step = 0
        for e in range(epochs):
            for _ in range(steps_per_epoch):
                step += 1
                cls, box = 2.0 / (1 + 0.1 * step) + 0.05 * rng.random(), 1.0 / (1 + 0.05 * step)
                w.writerow([e, step, "train", 0.01, cls + box, cls, box, 40 + rng.random(), 3.0, "", ""])
            cls, box = 2.2 / (1 + 0.08 * step), 1.1 / (1 + 0.04 * step)
            w.writerow([e, step, "val", "", cls + box, cls, box, "", "", 0.1 * (e + 1), 0.2 * (e + 1)])


def make_run(root: Path, full: bool = True, name: str = "fake-run", map_: float = 0.565) -> Path:
    """A run directory written by hand, with plausible numbers for every file the report reads."""
    run = root / "run"
    (run / "plots").mkdir(parents=True)
    images_dir = root / "images"
    images_dir.mkdir()
    config = {"name": name, "task": "detection", "model": {"name": "ssdlite320_mobilenet_v3_large", "image_size": 160},
              "data": {"path": str(images_dir)}, "eval": {"split": "val", "display_threshold": 0.5, "max_images": 0}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if not full:
        return run
    write_history(run / "history.csv")
    per_class = {"circle": {"ap": 0.71, "ap50": 0.93}, EVIL_CLASS: {"ap": 0.42, "ap50": 0.80}, MATH_CLASS: {"ap": None, "ap50": None}}
    metrics = {"map": map_, "map50": 0.865, "map75": 0.61, "map_small": 0.2, "map_medium": 0.6, "map_large": 0.8,
               "mar_1": 0.4, "mar_10": 0.6, "mar_100": 0.65, "num_images": 3, "num_detections": 9, "split": "val",
               "per_class": per_class, "subset": {"evaluated_images": 3, "total_images": 30}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    recall = np.linspace(0, 1, 101)
    (run / "pr_curves.json").write_text(json.dumps({"iou": 0.5, "curves": {
        name: {"recall": recall.tolist(), "precision": np.clip(1 - recall ** (3 - i), 0, 1).tolist()}
        for i, name in enumerate(CLASSES.values())}}))
    edges = np.linspace(0, 1, 21)
    (run / "detection_stats.json").write_text(json.dumps({
        "score_histogram": {"bins": edges.tolist(), "counts": [50, 30, 20, 12, 9, 7, 5, 5, 4, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1]},
        "per_image": {"0.05": {"mean": 52.0, "median": 50, "max": 80}, "0.25": {"mean": 6.1, "median": 6, "max": 9},
                      "0.5": {"mean": 3.0, "median": 3, "max": 4}},
        "outside_image_share": 0.02}))
    rng = np.random.default_rng(1)
    (run / "data_summary.json").write_text(json.dumps({
        "splits": {split: {"images": n, "boxes": 3 * n, "per_class": {"circle": 2 * n, EVIL_CLASS: n, MATH_CLASS: 0},
                           "box_sizes": rng.uniform(6, 120, size=(3 * n, 2)).round(1).tolist(),
                           "problems": {"box clipped to image": 2 if split == "train" else 0}}
                   for split, n in (("train", 24), ("val", 3))},
        "categories": list(CLASSES.values()), "empty_categories": [MATH_CLASS]}))
    (run / "diagnosis.json").write_text(json.dumps(FINDINGS))
    files = ["a.png", EVIL_FILE, "missing.png"]
    images, annotations, predictions = [], [], []
    for i, name in enumerate(files):
        if name != "missing.png":
            Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(images_dir / name)
        images.append({"id": i, "file_name": name, "width": 80, "height": 64})
        for k, cid in enumerate((1, 2)):
            annotations.append({"id": 2 * i + k, "image_id": i, "category_id": cid, "bbox": [5 + 30 * k, 10, 25, 20],
                                "area": 500, "iscrowd": 0})
            predictions.append({"image_id": i, "category_id": cid, "bbox": [6 + 30 * k, 11, 24, 20], "score": 0.9 - 0.3 * k})
        predictions.append({"image_id": i, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.07})
    (run / "gt.json").write_text(json.dumps({"images": images, "annotations": annotations, "image_root": str(images_dir),
                                             "categories": [{"id": k, "name": v} for k, v in CLASSES.items()]}))
    (run / "predictions.json").write_text(json.dumps(predictions))
    (run / "categories.json").write_text(json.dumps({"dataset_ids": [1, 2, 3], "names": list(CLASSES.values()), "background": True}))
    (run / "errors.json").write_text(json.dumps({"dAP": {"cls": 0.031, "loc": 0.082, "both": 0.01, "dupe": 0.004, "bkg": 0.05, "miss": 0.07},
                                                 "counts": {"cls": 4, "loc": 9, "both": 1, "dupe": 1, "bkg": 6, "miss": 5}}))
    (run / "consistency.json").write_text(json.dumps({"spearman": 0.41, "n": 9, "high_score_low_iou_share": 0.11,
                                                      "pairs": {"score": rng.random(9).tolist(), "iou": rng.random(9).tolist()}}))
    return run


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = make_run(tmp_path_factory.mktemp("report"))
    path = build_report(run)
    return run, path.read_text(encoding="utf-8")


def test_report_has_every_section_with_embedded_images(full_report: tuple[Path, str]) -> None:
    run, html = full_report
    assert (run / "report.html").is_file()
    for title in SECTION_TITLES:
        assert f">{title}</h2>" in html, title
        assert re.search(rf'<a href="#[a-z0-9-]+">{re.escape(title)}</a>', html), f"{title} missing from contents"
    assert "Not in this report" not in html
    assert "could not be built" not in html
    # loss curves, optimisation, validation metrics, class counts, box sizes, per-class AP, confusion matrix,
    # PR, score hist (twice: section and finding), detections per image, predictions, TIDE bars, score-IoU scatter
    assert html.count('src="data:image/png;base64,') == 14


def test_report_is_offline(full_report: tuple[Path, str]) -> None:
    _, html = full_report
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert refs
    assert all(r.startswith(("data:image/png;base64,", "#")) for r in refs), [r[:40] for r in refs if not r.startswith(("data:", "#"))]
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()


def test_data_strings_are_escaped(full_report: tuple[Path, str]) -> None:
    _, html = full_report
    assert EVIL_CLASS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(2)&gt;.png" in html
    assert "cost$_{x" in html  # the mathtext-like name is drawn (no crash) and listed


def test_plots_are_saved_for_reuse(full_report: tuple[Path, str]) -> None:
    run, _ = full_report
    for name in ("loss_curves", "validation_metrics", "per_class_ap", "pr_curves", "score_hist", "box_sizes", "predictions",
                 "tide_errors", "score_iou"):
        data = (run / "plots" / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG"), name


def test_diagnosis_root_cause_first_with_evidence_and_plot(full_report: tuple[Path, str]) -> None:
    _, html = full_report
    diag = html[html.index('id="diagnosis"'):html.index('id="data-summary"')]
    order = [diag.index(f["title"]) for f in (FINDINGS[2], FINDINGS[1], FINDINGS[0])]
    assert order == sorted(order)
    assert "Root cause first: The classifier predicts background everywhere" in diag
    assert ">0.4625<" in diag and "fg_prob_max" in diag
    assert "Fix: match anchors by IoU" in diag
    assert 'data:image/png;base64,' in diag and "plots/score_hist.png" in diag


def test_summary_warns_about_subset_and_states_sample_size(full_report: tuple[Path, str]) -> None:
    _, html = full_report
    summary = html[html.index('id="summary"'):html.index('id="diagnosis"')]
    assert "Evaluated on a subset: 3 images of 30 (10.0%)" in summary
    assert 'class="warning"' in summary
    assert "ssdlite320_mobilenet_v3_large" in summary and ">0.565<" in summary


def test_training_table_judges_the_curves(full_report: tuple[Path, str]) -> None:
    _, html = full_report
    curves = html[html.index('id="training-curves"'):html.index('id="metrics"')]
    for component in ("total loss", "classification", "bbox regression"):
        assert f"<td>{component}</td>" in curves


def test_error_analysis_names_the_largest_losses(full_report: tuple[Path, str]) -> None:
    _, html = full_report
    errors = html[html.index('id="error-analysis"'):]
    assert "Most AP is lost to loc (ΔAP 0.082) then miss (ΔAP 0.07)." in errors
    assert "Spearman rank correlation of score and IoU: 0.410 over 9 detections" in errors
    assert "<th>dAP</th><th>counts</th>" in errors  # same keys side by side in one table


def test_config_only_run_says_what_is_missing(tmp_path: Path) -> None:
    run = make_run(tmp_path, full=False)
    html = build_report(run).read_text(encoding="utf-8")
    assert ">Summary</h2>" in html
    assert "Diagnosis not run" in html
    assert "Not in this report" in html
    assert "Training curves: needs history.csv" in html
    assert "Per-class AP: needs metrics.json" in html
    assert "Predictions beside ground truth: needs predictions.json, gt.json" in html
    assert "could not be built" not in html


def test_broken_input_is_named_and_does_not_stop_the_report(tmp_path: Path) -> None:
    run = make_run(tmp_path, full=False)
    (run / "metrics.json").write_text('{"map": 0.5,\n "map50": }')
    html = build_report(run).read_text(encoding="utf-8")
    assert "could not be built" in html
    assert "metrics.json: line 2: invalid JSON" in html
    assert ">Diagnosis</h2>" in html


def test_features_register_their_own_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(section_registry, "_REGISTRY", dict(section_registry._REGISTRY))

    @section_registry.register_section(55, title="Anomaly scores", needs=("anomaly.json",))
    def anomaly(run):  # type: ignore[no-untyped-def]
        return Section("Anomaly scores", [Paragraph(f"AUROC from {EVIL_FILE}")]) if (run.path / "anomaly.json").exists() else None

    @section_registry.register_section(56, title="Broken feature")
    def broken(run):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    run = make_run(tmp_path, full=False)
    html = build_report(run).read_text(encoding="utf-8")
    assert "Anomaly scores: needs anomaly.json" in html
    assert "RuntimeError: boom" in html
    (run / "anomaly.json").write_text("{}")
    html = build_report(run).read_text(encoding="utf-8")
    assert ">Anomaly scores</h2>" in html and "AUROC from &lt;img" in html


def test_judge_tells_overfitting_from_a_plain_gap() -> None:
    steps = [float(s) for s in range(1, 41)]
    falling = Curve(steps, [1.0 / s for s in steps], [s // 10 for s in steps])
    val_x, val_e = [10.0, 20.0, 30.0, 40.0], [0.0, 1.0, 2.0, 3.0]
    rising = judge(falling, Curve(val_x, [0.8, 0.6, 0.7, 0.9], val_e))
    assert rising.startswith("overfitting") and "epoch 1" in rising
    gap_only = judge(falling, Curve(val_x, [0.9, 0.7, 0.6, 0.5], val_e))
    assert gap_only.startswith("validation above training") and "not evidence of overfitting" in gap_only


def test_diagnosis_markdown_reads_as_an_analysis() -> None:
    md = diagnosis_markdown(FINDINGS, "Diagnosis of fake-run")
    assert md.startswith("# Diagnosis of fake-run\n")
    assert "The root cause is **The classifier predicts background everywhere**" in md
    first, warning, info = (md.index(f["title"], md.index("## ")) for f in (FINDINGS[2], FINDINGS[1], FINDINGS[0]))
    assert first < warning < info
    assert md.index("## Root cause") < md.index("## Warnings") < md.index("## Notes")
    assert "| fg_prob_max | 0.4625 |" in md
    assert "![The classifier predicts background everywhere](plots/score_hist.png)" in md
    assert "**Fix.** match anchors by IoU" in md
    assert "plot |" not in md  # the plot reference is a picture, not an evidence row
    evil = diagnosis_markdown([{"id": "x", "severity": "warning", "title": EVIL_CLASS, "evidence": {"a|b": 1}}], "t")
    assert "<script>" not in evil and "a\\|b" in evil
    assert "nothing to report" in diagnosis_markdown([], "t")


def test_comparison_report_side_by_side(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", name="ssd", map_=0.40)
    b = make_run(tmp_path / "b", name="retinanet", map_=0.52)
    (a / "latency.json").write_text(json.dumps({"device": "cpu", "image_size": 320, "params": 3.4e6,
                                                "latency_ms": {"pytorch": 10.0, "onnxruntime": 5.0}}))
    (b / "latency.json").write_text(json.dumps({"device": "cpu", "image_size": 320, "params": 36e6,
                                                "latency_ms": {"pytorch": 40.0}}))
    out = build_comparison_report([a, b], tmp_path / "cmp.html")
    html = out.read_text(encoding="utf-8")
    for title in ("Comparison summary", "Metrics side by side", "Per-class AP", "Training and validation curves",
                  "Generalisation gap", "Speed"):
        assert f">{title}</h2>" in html, title
    assert ("Recommendation: retinanet (ssdlite320_mobilenet_v3_large) has the highest mAP, 0.520, 0.120 above ssd "
            "(0.400); ssd is 4.0× faster (10.0 vs 40.0 ms per image).") in html
    assert "<td>mAP@[.5:.95]</td><td class=\"num\">0.4</td><td class=\"num\">0.52</td><td>retinanet</td>" in html
    assert "<td>AP50</td><td class=\"num\">0.865</td><td class=\"num\">0.865</td><td>tie</td>" in html
    assert "<th>onnxruntime [ms/image]</th>" in html
    assert EVIL_CLASS not in html and "&lt;script&gt;" in html
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert all(r.startswith(("data:image/png;base64,", "#")) for r in refs)
    assert (tmp_path / "cmp_plots" / "loss_curves.png").read_bytes().startswith(b"\x89PNG")


def test_comparison_refuses_runs_on_different_data(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", name="ssd")
    b = make_run(tmp_path / "b", name="retinanet")
    gt = json.loads((b / "gt.json").read_text())
    gt["images"] = gt["images"][:2]
    (b / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(ComparisonError, match=r"different data .*ssd on 3 images in gt.json; retinanet on 2 images"):
        build_comparison_report([a, b], tmp_path / "cmp.html")
    (a / "gt.json").unlink()  # without gt.json everywhere, config.yaml's data decides
    (b / "gt.json").unlink()
    config = yaml.safe_load((b / "config.yaml").read_text())
    config["data"]["path"] = yaml.safe_load((a / "config.yaml").read_text())["data"]["path"]
    (b / "config.yaml").write_text(yaml.safe_dump(config))
    assert build_comparison_report([a, b], tmp_path / "same.html").is_file()
    config["eval"]["split"] = "test"
    (b / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ComparisonError, match=r"ssd on .*split val.*retinanet on .*split test"):
        build_comparison_report([a, b], tmp_path / "cmp.html")
    with pytest.raises(ComparisonError, match="at least two"):
        build_comparison_report([a], tmp_path / "cmp.html")
    assert not (tmp_path / "cmp.html").exists()


# ------------------------------------------------------------------ confusion matrices and worst-first galleries

def _section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}">')
    return html[start:html.index("</section>", start)]


def _first_column(table_html: str) -> list[str]:
    return re.findall(r"<tr><td class=\"num\">\d+</td><td class=\"num\">\d+</td><td>([^<]*)</td>", table_html)


def test_detection_report_confusion_matrix_and_worst_first_gallery(tmp_path: Path) -> None:
    html = build_report(make_detection_run(tmp_path)).read_text(encoding="utf-8")
    confusion = _section(html, "detection-confusion-matrix")
    assert 'src="data:image/png;base64,' in confusion and "background row counts predictions" in confusion
    assert ("2 of 8 ground-truth boxes found with the right class, 1 with a wrong class, 5 not found; "
            "4 predictions on no ground-truth box.") in confusion
    gallery = _section(html, "predictions-beside-ground-truth")
    assert 'src="data:image/png;base64,' in gallery and "lowest F1 at score ≥ 0.5" in gallery
    assert _first_column(gallery) == ["missed.png", "only_fp.png", "mixed.png", "perfect.png"]
    assert "<th>wrong class</th>" in gallery and "<th>poor localisation</th>" in gallery and "<th>missed</th>" in gallery
    assert "not found" not in gallery  # the images were drawn
    assert "Segmentation confusion matrix" not in html and "Worst segmented images" not in html
    assert (tmp_path / "det_run" / "plots" / "detection_confusion.png").read_bytes().startswith(b"\x89PNG")


def test_detection_report_reads_the_files_and_computes_them_for_older_runs(tmp_path: Path) -> None:
    with_files = build_report(make_detection_run(tmp_path / "a")).read_text(encoding="utf-8")
    without = build_report(make_detection_run(tmp_path / "b", write_quality=False)).read_text(encoding="utf-8")
    assert not (tmp_path / "b" / "det_run" / "detection_per_image.json").exists()
    for anchor in ("detection-confusion-matrix", "predictions-beside-ground-truth"):
        assert re.sub(r"base64,[^\"]*", "", _section(with_files, anchor)) == re.sub(r"base64,[^\"]*", "", _section(without, anchor))
    run = tmp_path / "a" / "det_run"  # the file, when present, is what the report shows
    confusion = json.loads((run / "detection_confusion.json").read_text())
    confusion["matrix"][0][0] = 12
    (run / "detection_confusion.json").write_text(json.dumps(confusion))
    assert "12 of 18 ground-truth boxes found" in build_report(run).read_text(encoding="utf-8")


def test_segmentation_report_confusion_matrix_and_worst_first_gallery(tmp_path: Path) -> None:
    html = build_report(make_segmentation_run(tmp_path, k=3)).read_text(encoding="utf-8")
    confusion = _section(html, "segmentation-confusion-matrix")
    assert 'src="data:image/png;base64,' in confusion and "each row sums to 100%" in confusion
    worst = _section(html, "worst-segmented-images")
    assert 'src="data:image/png;base64,' in worst and "lowest per-image mIoU of 5 evaluated" in worst
    rows = re.findall(r"<tr><td class=\"num\">(\d)</td><td>([^<]*)</td><td class=\"num\">\d</td><td>([\d.]+)</td>", worst)
    assert [r[1] for r in rows] == ["img_4.png", "img_3.png", "img_2.png"]
    assert [float(r[2]) for r in rows] == sorted(float(r[2]) for r in rows)
    assert "Detection confusion matrix" not in html  # neither shown nor listed as missing
    for name in ("segmentation_confusion", "segmentation_worst"):
        assert (tmp_path / "seg_run" / "plots" / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_confusion_classes_keeps_used_classes_and_background() -> None:
    from visiondoctor.report.plots import confusion_classes

    m = np.array([[5, 0, 0, 1], [0, 0, 0, 0], [0, 0, 2, 0], [3, 0, 1, 0]])  # class 1 never seen
    assert confusion_classes(m, 10, background=True) == [0, 2, 3]
    assert confusion_classes(m, 1, background=True) == [0, 3]  # the busiest class, then background
    assert confusion_classes(m[:3, :3], 10) == [0, 2]
