"""write_yolo: an index written as an Ultralytics-layout folder reads back with read_yolo unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from datafixtures import write_coco_dataset
from visiondoctor.data.formats import load_detection
from visiondoctor.data.formats.coco import read_coco
from visiondoctor.data.formats.yolo import read_yolo, write_yolo
from visiondoctor.data.samples import Category, DataError, DetectionIndex

BCCD = Path("/work/shared/datasets/bccd")
if not BCCD.is_dir():
    BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd"


def tiny_coco() -> dict:
    """Two folders holding an `img.png` each, plus `img.jpg` (same stem), a crowd box, an image
    without boxes, and a category (7) that no box uses."""
    images = [{"id": 1, "file_name": "a/img.png", "width": 64, "height": 48},
              {"id": 2, "file_name": "b/img.png", "width": 80, "height": 60},
              {"id": 3, "file_name": "img.jpg", "width": 50, "height": 40},
              {"id": 4, "file_name": "empty.png", "width": 30, "height": 30}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2.5, 3.25, 10, 12.75], "iscrowd": 0},
                   {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 10, 15, 20], "iscrowd": 0},
                   {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 80, 60], "iscrowd": 0},
                   {"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 1},
                   {"id": 5, "image_id": 3, "category_id": 7, "bbox": [1, 1, 3, 3], "iscrowd": 0}]
    categories = [{"id": 2, "name": "square"}, {"id": 1, "name": "circle"}, {"id": 7, "name": "star"},
                  {"id": 9, "name": "unused"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def non_crowd_boxes(index: DetectionIndex) -> dict[int, list[tuple[int, tuple[float, ...]]]]:
    """image id -> (category id, box) of the non-crowd boxes."""
    return {r.image_id: [(c, b) for b, c, crowd in zip(r.boxes, r.category_ids, r.iscrowd) if not crowd]
            for r in index.records}


def assert_round_trip(source: DetectionIndex, out: Path, split: str, categories: list[Category]) -> None:
    """read_yolo(out) has the source's images, classes and non-crowd boxes (to 1e-3 px)."""
    back = read_yolo(out, split)
    names = [c.name for c in sorted(categories, key=lambda c: c.id)]
    assert [c.name for c in back.categories] == names
    yolo_to_dataset = {i: c.id for i, c in enumerate(sorted(categories, key=lambda c: c.id))}
    gt = json.loads((out / f"gt_{split}.coco.json").read_text())
    written_name_to_id = {im["file_name"]: im["id"] for im in gt["images"]}
    assert not [p for p in back.problems if p.action == "refused"]
    expected = non_crowd_boxes(source)
    got = {written_name_to_id[r.file_name]: [(yolo_to_dataset[c], b) for b, c in zip(r.boxes, r.category_ids)]
           for r in back.records}
    assert got.keys() == expected.keys()
    for image_id, boxes in expected.items():
        remaining = list(got[image_id])
        for cid, box in boxes:  # pair each source box with a read-back box of its class within 1e-3 px
            match = next((k for k, (c, b) in enumerate(remaining)
                          if c == cid and max(abs(g - s) for g, s in zip(b, box)) < 1e-3), None)
            assert match is not None, (image_id, cid, box, remaining)
            remaining.pop(match)
        assert not remaining, (image_id, remaining)


@pytest.fixture
def tiny(tmp_path: Path) -> DetectionIndex:
    return read_coco(write_coco_dataset(tmp_path / "src", tiny_coco()))


def test_round_trip_tiny(tiny: DetectionIndex, tmp_path: Path):
    before = {p: p.read_bytes() for p in (tmp_path / "src").rglob("*") if p.is_file()}
    out = tmp_path / "yolo"
    result = write_yolo(tiny, out, "train")
    assert_round_trip(tiny, out, "train", tiny.categories)
    assert (result.images, result.boxes, result.crowd_skipped) == (4, 4, 1)
    assert result.names == ("circle", "square", "star", "unused")  # sorted by dataset id; the unused one kept
    assert result.renamed == 2  # b/img.png and img.jpg collide with a/img.png's stem `img`
    assert len(list(result.images_dir.iterdir())) == 4 and len(list(result.labels_dir.iterdir())) == 4
    assert (result.labels_dir / "empty.txt").read_text() == ""
    # The source is untouched, and each written image is its own source image (linked here: same file system).
    assert {p: p.read_bytes() for p in (tmp_path / "src").rglob("*") if p.is_file()} == before
    gt = json.loads(result.coco_gt.read_text())
    for image in gt["images"]:
        source = next(r.path for r in tiny.records if r.image_id == image["id"])
        assert (result.images_dir / image["file_name"]).samefile(source)
    assert result.linked == 4
    # The COCO ground truth keeps everything, crowd included, with the source's ids.
    assert sorted((a["image_id"], a["category_id"], a["iscrowd"]) for a in gt["annotations"]) == [
        (1, 1, 0), (1, 2, 0), (2, 1, 1), (2, 2, 0), (3, 7, 0)]
    data = yaml.safe_load(result.data_yaml.read_text())
    assert data == {"path": str(out.absolute()), "train": "images/train",
                    "names": {0: "circle", 1: "square", 2: "star", 3: "unused"}}


def test_second_split_uses_training_classes_and_joins_data_yaml(tiny: DetectionIndex, tmp_path: Path):
    out = tmp_path / "yolo"
    write_yolo(tiny, out, "train")
    val_source = tmp_path / "val_src"
    data = tiny_coco()
    data["images"], data["annotations"] = data["images"][2:3], data["annotations"][4:5]  # only a `star` box
    data["categories"] = [c for c in data["categories"] if c["id"] == 7]
    val = read_coco(write_coco_dataset(val_source, data))
    result = write_yolo(val, out, "val", categories=tiny.categories)
    assert (result.labels_dir / "img.txt").read_text().split()[0] == "2"  # star's index among the training classes
    assert result.renamed == 0
    assert yaml.safe_load(result.data_yaml.read_text())["val"] == "images/val"
    assert yaml.safe_load(result.data_yaml.read_text())["train"] == "images/train"
    assert [c["id"] for c in json.loads(result.coco_gt.read_text())["categories"]] == [1, 2, 7, 9]
    assert_round_trip(val, out, "val", tiny.categories)
    with pytest.raises(DataError, match="written for classes"):
        write_yolo(val, out, "test")  # val's own classes would renumber `star`


def test_refusals_write_nothing(tiny: DetectionIndex, tmp_path: Path):
    out = tmp_path / "yolo"
    only_circle = [c for c in tiny.categories if c.name == "circle"]
    with pytest.raises(DataError, match="category 2 is not among the classes"):
        write_yolo(tiny, out, "train", categories=only_circle)
    assert not out.exists()
    with pytest.raises(DataError, match="plain folder name"):
        write_yolo(tiny, out, "../x")
    write_yolo(tiny, out, "train")
    with pytest.raises(DataError, match="already holds files"):
        write_yolo(tiny, out, "train")


@pytest.mark.skipif(not BCCD.is_dir(), reason="BCCD dataset not present")
def test_round_trip_bccd_valid(tmp_path: Path):
    train = load_detection(BCCD, "auto", "train")
    valid = load_detection(BCCD, "auto", "valid")
    result = write_yolo(valid, tmp_path / "bccd", "val", categories=train.categories)
    assert result.names == ("RBC-WBC", "rbc", "wbc")
    assert (result.images, result.boxes, result.crowd_skipped, result.renamed) == (20, 470, 0, 0)
    assert_round_trip(valid, tmp_path / "bccd", "val", train.categories)
    assert load_detection(tmp_path / "bccd", "auto", "val").num_boxes == 470  # auto-detected as YOLO
