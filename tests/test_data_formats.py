"""Readers on well-formed input: the real BCCD export, COCO layouts, round trips, image decoding."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datafixtures import coco_dict, write_coco_dataset, write_image, write_voc_dataset, write_yolo_dataset
from visiondoctor.data.formats import detect_format, formats_for, list_splits, load_detection, match_split
from visiondoctor.data.formats.coco import read_coco, to_coco_dict, write_coco
from visiondoctor.data.formats.voc import read_voc
from visiondoctor.data.formats.yolo import read_yolo
from visiondoctor.data.images import image_size, load_rgb
from visiondoctor.data.validate import convert, format_report, problems_by_action, validate
from visiondoctor.data.samples import DataError

BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd"
if not BCCD.is_dir():
    BCCD = Path("/work/shared/datasets/bccd")
needs_bccd = pytest.mark.skipif(not BCCD.is_dir(), reason="BCCD dataset not present")


@needs_bccd
@pytest.mark.parametrize("split,images,boxes", [("train", 210, 4947), ("valid", 20, 470), ("val", 20, 470), ("test", 10, 221)])
def test_bccd_counts_and_empty_supercategory(split, images, boxes):
    index = load_detection(BCCD, split=split)
    assert len(index.records) == images
    assert index.num_boxes == boxes
    assert [c.name for c in index.empty_categories()] == ["RBC-WBC"]
    assert [(p.record, p.action, p.kind) for p in index.problems] == [("category 0", "info", "empty_category")]
    assert {c.id: c.name for c in index.categories} == {0: "RBC-WBC", 1: "rbc", 2: "wbc"}


@needs_bccd
def test_bccd_splits_and_format():
    assert detect_format(BCCD) == "coco"
    assert list_splits(BCCD) == ["test", "train", "valid"]
    with pytest.raises(DataError, match="choose one"):
        load_detection(BCCD)
    with pytest.raises(DataError, match="no split 'holdout'"):
        load_detection(BCCD, split="holdout")


@needs_bccd
def test_bccd_ground_truth_as_predictions_scores_ap_one():
    """The written GT dict is valid faster-coco-eval input, with annotation ids 1.. (id 0 would read as unmatched)."""
    from faster_coco_eval import COCO, COCOeval_faster

    index = load_detection(BCCD, split="test")
    gt = to_coco_dict(index)
    assert min(a["id"] for a in gt["annotations"]) >= 1
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
             for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(preds), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_coco_reads_boxes_as_xyxy(tmp_path):
    index = read_coco(write_coco_dataset(tmp_path))
    assert index.problems == []
    first = index.records[0]
    assert (first.image_id, first.width, first.height) == (1, 64, 48)
    assert first.boxes == [(2.0, 3.0, 12.0, 15.0), (20.0, 10.0, 35.0, 30.0)]
    assert first.category_ids == [1, 2] and first.annotation_ids == [1, 2]
    assert first.areas == [120.0, 300.0] and first.iscrowd == [0, 0]
    assert first.path == tmp_path / "img1.png"


def test_coco_round_trip(tmp_path):
    index = read_coco(write_coco_dataset(tmp_path / "src"))
    out = write_coco(index, tmp_path / "out" / "gt.json")
    again = read_coco(out, images_root=index.root)
    assert [(r.image_id, r.file_name, r.width, r.height, r.boxes, r.category_ids, r.annotation_ids) for r in again.records] == [
        (r.image_id, r.file_name, r.width, r.height, r.boxes, r.category_ids, r.annotation_ids) for r in index.records
    ]
    assert again.categories == index.categories
    assert not list((tmp_path / "out").glob(".*tmp"))  # the atomic write left no temporary file


def test_coco_layout_with_instances_files(tmp_path):
    data = coco_dict()
    write_coco_dataset(tmp_path / "val2017", data, name="unused.json")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    assert detect_format(tmp_path) == "coco"
    assert list_splits(tmp_path) == ["val2017"]
    index = load_detection(tmp_path)  # a single split needs no name
    assert index.root == tmp_path / "val2017"
    assert len(index.records) == 2 and index.problems == []


def test_single_roboflow_split_folder_and_json_file(tmp_path):
    path = write_coco_dataset(tmp_path)
    assert len(load_detection(tmp_path).records) == 2
    assert len(load_detection(path, split="ignored for a file").records) == 2


def test_check_images_off_trusts_json(tmp_path):
    data = coco_dict()
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))  # no image files at all
    index = read_coco(path, check_images=False)
    assert len(index.records) == 2 and index.num_boxes == 4


def test_unknown_folder_and_format(tmp_path):
    assert {f.name for f in formats_for("detection")} >= {"coco", "voc", "yolo"}  # plug-ins may add more
    with pytest.raises(DataError, match="no detection dataset recognised"):
        load_detection(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_detection(tmp_path / "missing")
    with pytest.raises(DataError, match="unknown detection format"):
        load_detection(write_coco_dataset(tmp_path), format="pascal")


def test_match_split_aliases():
    assert match_split("val", ["train", "valid"]) == "valid"
    assert match_split("valid", ["train", "val"]) == "val"
    assert match_split("validation", ["val"]) == "val"
    assert match_split("test", ["train", "valid"]) is None


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_load_rgb_any_mode_gives_uint8_rgb(tmp_path, mode):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = write_image(tmp_path / f"x{suffix}", 20, 10, mode)
    image = load_rgb(path)
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 10, 20)
    assert image_size(path) == (20, 10)


def test_load_rgb_scales_16_bit_instead_of_clipping(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = load_rgb(tmp_path / "deep.png")
    assert image[0, 0].tolist() == [0, 100, 255]
    assert torch.equal(image[0], image[2])  # grey stays grey


def test_load_rgb_and_size_name_the_bad_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    for fn in (load_rgb, image_size):
        with pytest.raises(DataError, match="broken.png"):
            fn(bad)
        with pytest.raises(DataError, match="not found"):
            fn(tmp_path / "gone.png")
    truncated = write_image(tmp_path / "cut.png", 64, 64)
    truncated.write_bytes(truncated.read_bytes()[:80])
    with pytest.raises(DataError, match="cut.png"):
        load_rgb(truncated)


# --- Pascal VOC ---------------------------------------------------------------------------------

def test_voc_devkit_layout(tmp_path):
    write_voc_dataset(tmp_path)
    assert detect_format(tmp_path) == "voc" and list_splits(tmp_path) == []
    index = load_detection(tmp_path)
    assert index.problems == []
    assert [(c.id, c.name) for c in index.categories] == [(1, "cat"), (2, "dog")]  # sorted names -> 1..N
    a, b = index.records
    assert (a.image_id, a.file_name, a.path) == (1, "a.png", tmp_path / "JPEGImages" / "a.png")
    assert a.boxes == [(0.0, 0.0, 64.0, 48.0), (9.0, 4.0, 20.0, 25.0)]  # 1-based inclusive -> xyxy
    assert a.category_ids == [2, 1] and a.iscrowd == [0, 1]  # difficult -> iscrowd
    assert [a.annotation_ids, b.annotation_ids] == [[1, 2], [3]]


def test_voc_flat_layout_and_splits(tmp_path):
    write_voc_dataset(tmp_path / "flat", flat=True)
    assert detect_format(tmp_path / "flat") == "voc"
    assert len(load_detection(tmp_path / "flat").records) == 2
    write_voc_dataset(tmp_path / "kit", splits={"train": ["b"], "val": ["a"]})
    (tmp_path / "kit" / "ImageSets" / "Main" / "cat_train.txt").write_text("b  1\n")  # per-class list, not a split
    assert list_splits(tmp_path / "kit") == ["train", "val"]
    index = load_detection(tmp_path / "kit", split="valid")
    assert [r.file_name for r in index.records] == ["a.png"]
    assert read_voc(tmp_path / "kit", split="train").num_boxes == 1


# --- YOLO -------------------------------------------------------------------------------------------

def test_yolo_ultralytics_layout(tmp_path):
    write_yolo_dataset(tmp_path, "train")
    write_yolo_dataset(tmp_path, "val")
    assert detect_format(tmp_path) == "yolo" and list_splits(tmp_path) == ["train", "val"]
    index = load_detection(tmp_path, split="valid")
    assert index.problems == []
    assert [(c.id, c.name) for c in index.categories] == [(0, "circle"), (1, "square")]  # YOLO index kept
    a, b = index.records
    assert a.boxes == [pytest.approx((24.0, 12.0, 40.0, 36.0)), pytest.approx((3.2, 4.8, 9.6, 14.4))]
    assert a.category_ids == [0, 1] and b.boxes == [(0.0, 0.0, 80.0, 60.0)]
    assert a.file_name == "a.png" and a.path == tmp_path / "images" / "val" / "a.png"


def test_yolo_roboflow_layout_dict_names_and_classes_txt(tmp_path):
    write_yolo_dataset(tmp_path / "rf", "valid", names={0: "circle", 1: "square"}, roboflow=True)
    assert list_splits(tmp_path / "rf") == ["valid"]
    assert load_detection(tmp_path / "rf", split="val").num_boxes == 3
    assert load_detection(tmp_path / "rf" / "data.yaml").num_boxes == 3
    write_yolo_dataset(tmp_path / "ct", None, names_file="classes.txt")
    index = read_yolo(tmp_path / "ct", None)
    assert [c.name for c in index.categories] == ["circle", "square"] and index.num_boxes == 3


def test_yolo_polygon_line_gives_its_bounding_box(tmp_path):
    write_yolo_dataset(tmp_path, "train", images={"a": (100, 50, ["0 0.1 0.2 0.5 0.2 0.3 0.8"])})
    assert read_yolo(tmp_path, "train").records[0].boxes == [pytest.approx((10.0, 10.0, 50.0, 40.0))]


def test_voc_and_yolo_convert_to_coco(tmp_path):
    for name, make in (("voc", write_voc_dataset), ("yolo", lambda p: write_yolo_dataset(p, None))):
        index = load_detection(make(tmp_path / name))
        again = read_coco(write_coco(index, tmp_path / f"{name}.json"), images_root=index.root)
        assert [(r.boxes, r.category_ids) for r in again.records] == [(r.boxes, r.category_ids) for r in index.records]


# --- validate and convert -------------------------------------------------------------------------

@needs_bccd
def test_validate_bccd_reports_classes_sizes_and_empty_supercategory():
    report = validate(load_detection(BCCD, split="train"))
    assert (report.num_images, report.num_boxes, report.ok) == (210, 4947, True)
    assert report.categories == [{"id": 0, "name": "RBC-WBC", "boxes": 0}, {"id": 1, "name": "rbc", "boxes": 4725},
                                 {"id": 2, "name": "wbc", "boxes": 222}]
    assert report.empty_categories == ["RBC-WBC"]
    assert report.problem_counts == {"empty_category": {"info": 1}}
    stats = report.box_stats
    assert stats["small"] + stats["medium"] + stats["large"] == 4947
    assert 0 < stats["width_min"] <= stats["width_median"] <= stats["width_max"] <= 416
    text = format_report(report)
    assert "RBC-WBC" in text and "(no boxes)" in text and "0 refused" in text


def test_validate_counts_problems_by_kind_and_action(tmp_path):
    data = coco_dict()
    data["annotations"][0]["bbox"] = [-1, 3, 11, 12]  # clipped
    data["annotations"][1]["category_id"] = 5  # refused
    data["annotations"][2]["bbox"] = [0, 0, 0, 4]  # refused
    report = validate(read_coco(write_coco_dataset(tmp_path, data)))
    assert report.problem_counts == {"box_clipped": {"repaired": 1}, "empty_box": {"refused": 1},
                                     "unknown_category": {"refused": 1}}
    assert (report.refused, report.repaired, report.ok, report.num_boxes) == (2, 1, False, 2)
    assert report.to_dict()["refused"] == 2
    assert "annotation id 2" in format_report(report)
    assert problems_by_action(read_coco(tmp_path / "_annotations.coco.json").problems) == {
        "repaired": 1, "refused": 2, "info": 0}


def test_convert_writes_coco_readable_in_place_or_names_the_root(tmp_path):
    write_voc_dataset(tmp_path / "voc")
    inside = convert(tmp_path / "voc", "auto", None, tmp_path / "voc" / "coco.json")
    assert inside.readable_in_place
    back = read_coco(inside.out_path)
    assert back.problems == [] and back.num_boxes == 3
    assert [r.path for r in back.records] == [r.path for r in inside.index.records]
    elsewhere = convert(tmp_path / "voc", "voc", None, tmp_path / "out" / "coco.json")
    assert not elsewhere.readable_in_place and elsewhere.images_root == tmp_path / "voc" / "JPEGImages"
    assert read_coco(elsewhere.out_path, images_root=elsewhere.images_root).num_boxes == 3
