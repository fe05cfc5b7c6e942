"""LabelMe JSON read as boxes, from a small dataset this test writes: found by auto-detection, split
folders listed, each shape type turned into its box, and what cannot be a box refused by file and shape."""
import json

import pytest
from PIL import Image

from visiondoctor.data.formats import detect_format, list_splits, load_detection
from visiondoctor.data.samples import DataError


def write_labelme(folder, stem, shapes, size=(64, 48), image=True):
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        Image.new("RGB", size, (90, 90, 90)).save(folder / f"{stem}.jpg")
    doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": f"{stem}.jpg", "imageData": None,
           "imageWidth": size[0], "imageHeight": size[1]}
    (folder / f"{stem}.json").write_text(json.dumps(doc))


def shape(label, points, kind):
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "labelme"
    write_labelme(root / "train", "a", [shape("cat", [[40, 30], [10, 5]], "rectangle"),  # corners in either order
                                        shape("dog", [[5, 5], [20, 8], [12, 25]], "polygon")])
    write_labelme(root / "train", "b", [shape("cat", [[30, 20], [30, 30]], "circle"),
                                        shape("dog", [[3, 3]], "point")])
    write_labelme(root / "valid", "c", [shape("dog", [[1, 1], [11, 11]], "rectangle")])
    return root


def test_auto_detected_with_its_splits(dataset):
    assert detect_format(dataset) == "labelme"
    assert list_splits(dataset) == ["train", "valid"]
    assert len(load_detection(dataset, split="val").records) == 1  # "val" finds the valid/ folder


def test_every_shape_type_becomes_its_box(dataset):
    index = load_detection(dataset, split="train")
    names = {c.id: c.name for c in index.categories}
    assert sorted(names.values()) == ["cat", "dog"]
    a, b = index.records
    assert a.width == 64 and a.height == 48
    assert [(names[c], box) for c, box in zip(a.category_ids, a.boxes)] == [
        ("cat", (10, 5, 40, 30)), ("dog", (5, 5, 20, 25))]
    assert [(names[c], box) for c, box in zip(b.category_ids, b.boxes)] == [("cat", (20, 10, 40, 30))]


def test_a_point_is_refused_naming_file_and_shape(dataset):
    index = load_detection(dataset, split="train")
    refused = [p for p in index.problems if p.action == "refused"]
    assert [(p.record, p.kind) for p in refused] == [("b.json shape 2", "not_a_box")]
    assert refused[0].file.endswith("b.json")


def test_a_missing_image_is_refused_and_a_folder_without_images_is_an_error(tmp_path):
    root = tmp_path / "flat"
    write_labelme(root, "ok", [shape("cat", [[1, 1], [9, 9]], "rectangle")])
    write_labelme(root, "gone", [shape("cat", [[1, 1], [9, 9]], "rectangle")], image=False)
    index = load_detection(root)
    assert [r.file_name for r in index.records] == ["ok.jpg"]
    assert {(p.record, p.kind) for p in index.problems if p.action == "refused"} >= {("gone.json", "missing_image")}
    (root / "ok.jpg").unlink()
    with pytest.raises(DataError):
        load_detection(root)
