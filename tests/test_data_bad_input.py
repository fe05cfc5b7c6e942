"""Every bad-input case of the readers: repaired with a counted Problem, refused with one, or a DataError.

Each Problem must name the file and the record; nothing may vanish without a "refused" Problem.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from datafixtures import coco_dict, voc_xml, write_coco_dataset, write_image, write_voc_dataset, write_yolo_dataset
from visiondoctor.data.formats.coco import read_coco
from visiondoctor.data.formats.voc import read_voc
from visiondoctor.data.formats.yolo import read_yolo
from visiondoctor.data.images import resolve_image_path
from visiondoctor.data.samples import DataError, DetectionIndex


def problems(index: DetectionIndex, action: str | None = None) -> list[tuple[str, str]]:
    """(record, kind) of every problem except empty-category info, optionally of one action."""
    return [(p.record, p.kind) for p in index.problems
            if p.kind != "empty_category" and (action is None or p.action == action)]


def read_mutated(tmp_path: Path, mutate) -> DetectionIndex:
    data = coco_dict()
    write_coco_dataset(tmp_path, data)  # images from the valid dict
    mutate(data)
    path = tmp_path / "_annotations.coco.json"
    path.write_text(json.dumps(data))
    return read_coco(path)


def annotation(data: dict, ann_id: int) -> dict:
    return next(a for a in data["annotations"] if a["id"] == ann_id)


# --- the whole file is unusable -------------------------------------------------------------

@pytest.mark.parametrize(
    "content,message",
    [
        (b'{"images": [', "invalid JSON at line 1"),
        (b"[1, 2, 3]", "top level is a JSON list"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b'{"categories": []}', "'images' is missing"),
        (b'{"images": {}, "categories": []}', "'images' is a dict"),
        (b'{"images": [], "categories": []}', "no usable images"),
        (b'{"images": [], "annotations": 5, "categories": []}', "'annotations' is a int"),
    ],
)
def test_unusable_file_raises_data_error_naming_it(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_coco(path)
    assert str(path) in str(err.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_coco(tmp_path / "nope.json")
    with pytest.raises(DataError, match="is a folder"):
        read_coco(tmp_path)


def test_missing_categories_is_refused(tmp_path):
    with pytest.raises(DataError, match="'categories' is missing"):
        read_mutated(tmp_path, lambda d: d.pop("categories"))


def test_duplicate_image_ids_refuse_the_file(tmp_path):
    def mutate(d):
        d["images"][1]["id"] = 1

    with pytest.raises(DataError, match=r"duplicate image ids \[1\]") as err:
        read_mutated(tmp_path, mutate)
    assert [(p.record, p.kind) for p in err.value.problems] == [("image id 1", "duplicate_id")]


def test_duplicate_category_id_merged_or_refused(tmp_path):
    index = read_mutated(tmp_path, lambda d: d["categories"].append({"id": 2, "name": "square"}))
    assert problems(index) == [("category id 2", "duplicate_id")]
    assert [c.id for c in index.categories] == [1, 2]
    with pytest.raises(DataError, match="category id 2 is defined twice with different names"):
        read_mutated(tmp_path, lambda d: d["categories"].append({"id": 2, "name": "triangle"}))


def test_every_annotation_refused_is_a_data_error(tmp_path):
    def mutate(d):
        for a in d["annotations"]:
            a["category_id"] = 99

    with pytest.raises(DataError, match="none of the 4 boxes is usable") as err:
        read_mutated(tmp_path, mutate)
    assert len(err.value.problems) == 4


def test_no_image_file_at_all_is_a_data_error(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(coco_dict()))
    with pytest.raises(DataError, match="no usable images") as err:
        read_coco(path)
    assert {p.kind for p in err.value.problems} >= {"missing_image", "image_refused"}


# --- boxes -----------------------------------------------------------------------------------

def test_box_one_pixel_outside_is_clipped_and_counted(tmp_path):
    index = read_mutated(tmp_path, lambda d: annotation(d, 2).update(bbox=[-1, 10, 65, 39]))  # image 64x48
    assert problems(index, "repaired") == [("annotation id 2", "box_clipped")]
    assert index.records[0].boxes[1] == (0.0, 10.0, 64.0, 48.0)
    assert index.records[0].areas[1] == 64.0 * 38.0
    message = str(index.problems[0])
    assert "_annotations.coco.json" in message and "annotation id 2" in message and "[-1, 10, 65, 39]" in message


@pytest.mark.parametrize(
    "bbox,kind",
    [
        ([50, 10, 40, 10], "box_outside"),  # x2 = 90 on a 64 px wide image
        ([-30, 0, 10, 10], "box_outside"),
        ([-1.5, 0, 1.0, 10], "box_outside"),  # within the slack but nothing left after clipping
        ([5, 5, 0, 10], "empty_box"),
        ([5, 5, 10, -3], "empty_box"),
        ([5, 5, 10], "wrong_type"),
        (["5", 5, 10, 10], "wrong_type"),
        ([True, 5, 10, 10], "wrong_type"),
        ("5 5 10 10", "wrong_type"),
        (None, "wrong_type"),
    ],
)
def test_bad_box_is_refused_and_counted(tmp_path, bbox, kind):
    index = read_mutated(tmp_path, lambda d: annotation(d, 3).update(bbox=bbox))
    assert problems(index) == [("annotation id 3", kind)]
    assert index.num_boxes == 3
    assert 3 not in index.records[1].annotation_ids


def test_non_finite_box_from_json_nan(tmp_path):
    path = write_coco_dataset(tmp_path)
    path.write_text(path.read_text().replace("[2, 3, 10, 12]", "[NaN, 3, 10, 12]", 1))
    index = read_coco(path)
    assert problems(index) == [("annotation id 1", "wrong_type")]


def test_missing_bbox_key(tmp_path):
    index = read_mutated(tmp_path, lambda d: annotation(d, 1).pop("bbox"))
    assert problems(index) == [("annotation id 1", "missing_key")]


# --- references and ids ------------------------------------------------------------------------

def test_unknown_category_and_image_are_refused(tmp_path):
    def mutate(d):
        annotation(d, 1)["category_id"] = 7
        annotation(d, 2)["image_id"] = 42
        annotation(d, 3)["category_id"] = "1"
        annotation(d, 4).pop("image_id")
        d["annotations"].append({"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]})

    index = read_mutated(tmp_path, mutate)
    assert sorted(problems(index)) == [
        ("annotation id 1", "unknown_category"),
        ("annotation id 2", "unknown_image"),
        ("annotation id 3", "wrong_type"),
        ("annotation id 4", "missing_key"),
    ]
    assert index.num_boxes == 1 and index.records[0].annotation_ids == [5]


def test_duplicate_and_missing_annotation_ids_are_renumbered(tmp_path):
    def mutate(d):
        annotation(d, 2)["id"] = 1
        d["annotations"][3].pop("id")

    index = read_mutated(tmp_path, mutate)
    assert sorted(problems(index, "repaired")) == [("annotation id 1", "duplicate_id"), ("annotations[3]", "missing_key")]
    ids = [a for r in index.records for a in r.annotation_ids]
    assert ids == [1, 4, 3, 5] and index.num_boxes == 4  # max id 3 -> fresh ids 4, 5 in file order


def test_entries_of_the_wrong_type(tmp_path):
    def mutate(d):
        d["annotations"].append("not an object")
        d["images"].append(17)
        d["categories"].append([3, "x"])

    index = read_mutated(tmp_path, mutate)
    assert sorted(problems(index)) == [("annotations[4]", "wrong_type"), ("categories[2]", "wrong_type"),
                                       ("images[2]", "wrong_type")]
    assert index.num_boxes == 4


def test_iscrowd_and_area_repaired(tmp_path):
    def mutate(d):
        annotation(d, 1)["iscrowd"] = 5
        annotation(d, 2)["area"] = -3

    index = read_mutated(tmp_path, mutate)
    assert sorted(problems(index, "repaired")) == [("annotation id 1", "wrong_type"), ("annotation id 2", "wrong_type")]
    assert index.records[0].iscrowd == [0, 0] and index.records[0].areas[1] == 15.0 * 20.0


# --- images ------------------------------------------------------------------------------------

def test_missing_and_unreadable_image_refused_with_their_boxes(tmp_path):
    write_coco_dataset(tmp_path)
    (tmp_path / "img2.png").write_bytes(b"\x89PNG but not really")
    index = read_coco(tmp_path / "_annotations.coco.json")
    assert sorted(problems(index)) == [("annotation id 3", "image_refused"), ("annotation id 4", "image_refused"),
                                       ("image id 2", "unreadable_image")]
    (tmp_path / "img2.png").unlink()
    index = read_coco(tmp_path / "_annotations.coco.json")
    assert ("image id 2", "missing_image") in problems(index, "refused")
    assert "img2.png" in str(next(p for p in index.problems if p.kind == "missing_image"))
    assert len(index.records) == 1 and index.num_boxes == 2


def test_size_in_json_disagreeing_with_file_is_repaired(tmp_path):
    def mutate(d):
        d["images"][0].update(width=640, height=480)
        d["images"][1].pop("height")

    index = read_mutated(tmp_path, mutate)
    assert sorted(problems(index, "repaired")) == [("image id 1", "size_mismatch"), ("image id 2", "bad_size")]
    assert [(r.width, r.height) for r in index.records] == [(64, 48), (80, 60)]


def test_size_missing_without_image_check_is_refused(tmp_path):
    data = coco_dict()
    data["images"][0]["width"] = "64"
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    index = read_coco(path, check_images=False)
    assert ("image id 1", "bad_size") in problems(index, "refused")


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_unusual_image_modes_read_without_problems(tmp_path, mode):
    write_coco_dataset(tmp_path)
    write_image(tmp_path / "img1.png", 64, 48, mode)
    index = read_coco(tmp_path / "_annotations.coco.json")
    assert problems(index) == [] and index.records[0].width == 64


@pytest.mark.parametrize("name", ["../outside.png", "sub/../../outside.png", "/etc/passwd", "", "a\x00b.png"])
def test_file_name_escaping_the_root_is_refused(tmp_path, name):
    root = tmp_path / "data"
    write_image(tmp_path / "outside.png")  # exists, but outside the dataset root
    index = read_mutated(root, lambda d: d["images"][0].update(file_name=name))
    assert ("image id 1", "path_escape") in problems(index, "refused")
    assert len(index.records) == 1
    assert all(r.path.is_relative_to(root) for r in index.records)


def test_resolve_image_path_confines_to_root(tmp_path):
    assert resolve_image_path(tmp_path, "a/b.png", "f.json", "image id 1") == tmp_path / "a" / "b.png"
    assert resolve_image_path(tmp_path, "a/../b.png", "f.json", "image id 1") == tmp_path / "b.png"
    with pytest.raises(DataError, match="f.json: image id 9: file name '../b.png' escapes") as err:
        resolve_image_path(tmp_path, "../b.png", "f.json", "image id 9")
    assert err.value.problems[0].action == "refused"


# --- accounting ----------------------------------------------------------------------------------

def test_nothing_is_dropped_without_a_refusal(tmp_path):
    def mutate(d):
        annotation(d, 1)["bbox"] = [0, 0, -1, 5]
        annotation(d, 2)["category_id"] = 9
        annotation(d, 3)["bbox"] = [-1, -1, 20, 20]  # clipped, kept

    index = read_mutated(tmp_path, mutate)
    refused = [p for p in index.problems if p.action == "refused" and p.record.startswith("annotation")]
    assert index.num_boxes + len(refused) == 4
    for p in index.problems:
        assert p.file.endswith("_annotations.coco.json") and p.record and p.message


# --- Pascal VOC ---------------------------------------------------------------------------------

def voc_with(tmp_path: Path, objects: list[tuple], filename: str = "c.png", size=(64, 48), image=True) -> DetectionIndex:
    """The two good fixture images plus c.xml with `objects`."""
    write_voc_dataset(tmp_path)
    if image:
        write_image(tmp_path / "JPEGImages" / "c.png", *size)
    (tmp_path / "Annotations" / "c.xml").write_text(voc_xml(filename, *size, objects))
    return read_voc(tmp_path)


@pytest.mark.parametrize(
    "obj,kind",
    [
        (("dog", 1, 1, 65, 49), "box_clipped"),  # one pixel past the 64x48 image
        (("dog", 1, 1, 164, 48), "box_outside"),
        (("dog", 30, 5, 20, 25), "empty_box"),  # xmin > xmax
        (("dog", "a", 5, 20, 25), "wrong_type"),
        (("", 1, 1, 10, 10), "missing_key"),
        (("dog", 1, 1, 10, 10, "maybe"), "wrong_type"),  # difficult repaired to 0
    ],
)
def test_voc_bad_object(tmp_path, obj, kind):
    index = voc_with(tmp_path, [obj, ("cat", 2, 2, 9, 9)])
    assert problems(index) == [("c.xml object 1", kind)]
    problem = next(p for p in index.problems if p.kind == kind)
    assert problem.file == str(tmp_path / "Annotations" / "c.xml")
    assert index.num_boxes == 3 + 1 + (problem.action == "repaired")  # fixture boxes + the good cat (+ the repaired one)


def test_voc_bad_files(tmp_path):
    write_voc_dataset(tmp_path)
    ann = tmp_path / "Annotations"
    (ann / "broken.xml").write_text("<annotation><filename>a.png</filename")
    (ann / "other.xml").write_text("<svg></svg>")
    (ann / "gone.xml").write_text(voc_xml("gone.png", 10, 10, [("dog", 1, 1, 5, 5)]))
    (ann / "escape.xml").write_text(voc_xml("../../x.png", 10, 10, [("dog", 1, 1, 5, 5)]))
    (ann / "size.xml").write_text(voc_xml("b.png", 100, 100, [("dog", 1, 1, 5, 5)]))
    bomb = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
            + "".join(f'<!ENTITY a{i} "{("&a;" if i == 1 else f"&a{i - 1};") * 10}">' for i in range(1, 9))
            + ']><annotation><filename>&a8;</filename></annotation>')
    (ann / "bomb.xml").write_text(bomb)
    index = read_voc(tmp_path)
    assert sorted(problems(index, "refused") + problems(index, "repaired")) == [
        ("bomb.xml", "invalid_xml"), ("broken.xml", "invalid_xml"),
        ("escape.xml", "path_escape"), ("escape.xml object 1", "image_refused"),
        ("gone.xml", "missing_image"), ("gone.xml object 1", "image_refused"),
        ("other.xml", "invalid_xml"), ("size.xml", "size_mismatch"),
    ]
    assert len(index.records) == 3
    assert ("size.xml", "duplicate_file") in [(p.record, p.kind) for p in index.problems if p.action == "info"]


def test_voc_split_list_problems(tmp_path):
    write_voc_dataset(tmp_path, splits={"train": ["a", "missing", "../../../etc/passwd", "b"]})
    index = read_voc(tmp_path, split="train")
    assert [(p.file.endswith("train.txt"), p.record, p.kind) for p in index.problems] == [
        (True, "line 2", "missing_annotation"), (True, "line 3", "path_escape")]
    assert len(index.records) == 2
    with pytest.raises(DataError, match="split list not found"):
        read_voc(tmp_path, split="test")


def test_voc_without_xml_or_usable_images(tmp_path):
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(DataError, match="no VOC annotation"):
        read_voc(tmp_path)
    (tmp_path / "Annotations" / "a.xml").write_text(voc_xml("a.png", 10, 10, [("dog", 1, 1, 5, 5)]))
    with pytest.raises(DataError, match="no usable images") as err:
        read_voc(tmp_path)
    assert err.value.problems[0].kind == "missing_image"


# --- YOLO --------------------------------------------------------------------------------------------

def yolo_with(tmp_path: Path, lines: list[str], **kw) -> DetectionIndex:
    write_yolo_dataset(tmp_path, "train", images={"a": (64, 48, ["0 0.5 0.5 0.5 0.5"]), "c": (64, 48, lines)}, **kw)
    return read_yolo(tmp_path, "train")


@pytest.mark.parametrize(
    "line,kind",
    [
        ("0 0.99 0.5 0.04 0.2", "box_clipped"),  # x2 = 1.01 * 64: 0.64 px outside
        ("0 32 24 16 24", "box_outside"),  # pixels instead of fractions
        ("0 0.5 0.5 0 0.2", "empty_box"),
        ("0 0.5 0.5 0.2", "wrong_type"),
        ("0 0.5 0.5 0.2 0.2 0.9", "wrong_type"),
        ("0 0.5 0.5 x 0.2", "wrong_type"),
        ("0 0.5 nan 0.2 0.2", "wrong_type"),
        ("1.5 0.5 0.5 0.2 0.2", "wrong_type"),
        ("-1 0.5 0.5 0.2 0.2", "wrong_type"),
        ("7 0.5 0.5 0.2 0.2", "unknown_category"),
    ],
)
def test_yolo_bad_line(tmp_path, line, kind):
    index = yolo_with(tmp_path, ["1 0.5 0.5 0.2 0.2", line])
    assert problems(index) == [("line 2", kind)]
    assert index.problems[0].file == str(tmp_path / "labels" / "train" / "c.txt")
    assert index.num_boxes == (3 if kind == "box_clipped" else 2)
    if kind == "box_outside":
        assert "pixels instead of fractions" in index.problems[0].message


def test_yolo_orphan_label_unlabelled_and_unreadable(tmp_path):
    write_yolo_dataset(tmp_path, "train", images={"a": (64, 48, ["0 0.5 0.5 0.5 0.5"]), "b": (64, 48, None),
                                                  "c": (64, 48, ["0 0.5 0.5 0.5 0.5"]), "d": (64, 48, ["1 .5 .5 .5 .5"])})
    (tmp_path / "labels" / "train" / "zz.txt").write_text("0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n")
    (tmp_path / "images" / "train" / "c.png").write_bytes(b"garbage")
    (tmp_path / "labels" / "train" / "d.txt").write_bytes(b"\xff\xfe 0 0.5")
    index = read_yolo(tmp_path, "train")
    assert sorted(problems(index)) == [
        ("1 images", "no_label_file"), ("c.png", "unreadable_image"), ("d.png", "image_refused"),
        ("d.txt", "invalid_label_file"), ("line 1", "image_refused"), ("line 1", "orphan_label"),
        ("line 2", "orphan_label"),
    ]
    assert [r.file_name for r in index.records] == ["a.png", "b.png"] and index.num_boxes == 1


def test_yolo_names_files(tmp_path):
    index = yolo_with(tmp_path / "none", ["5 0.5 0.5 0.2 0.2"], names_file=None)
    assert [(c.id, c.name) for c in index.categories] == [(0, "class_0"), (5, "class_5")]
    assert ("classes", "missing_names") in [(p.record, p.kind) for p in index.problems]
    for text, message in (("names: [a, b", "invalid YAML"), ("nc: 2\n", "'names' missing"),
                          ("names: {x: a}\n", "not a class index"), ("d: 2020-13-45\nnames: [a]\n", "invalid YAML")):
        write_yolo_dataset(tmp_path / "bad", "train")
        (tmp_path / "bad" / "data.yaml").write_text(text)
        with pytest.raises(DataError, match=message) as err:
            read_yolo(tmp_path / "bad", "train")
        assert "data.yaml" in str(err.value)


def test_yolo_missing_split_and_all_refused(tmp_path):
    write_yolo_dataset(tmp_path, "train")
    with pytest.raises(DataError, match=r"no YOLO image folder.*splits found: \['train'\]"):
        read_yolo(tmp_path, "test")
    with pytest.raises(DataError, match="none of the 2 boxes is usable"):
        write_yolo_dataset(tmp_path / "x", "train", images={"a": (64, 48, ["9 .5 .5 .1 .1", "9 .5 .5 .1 .1"])})
        read_yolo(tmp_path / "x", "train")


def test_numbers_beyond_float_int64_or_any_image(tmp_path):
    """Found by fuzzing: 10**400 breaks float(), ids beyond int64 break the evaluator, names beyond NAME_MAX break stat()."""
    def mutate(d):
        d["images"][1]["width"] = 10**400
        annotation(d, 1)["id"] = 2**64
        annotation(d, 2)["category_id"] = 2**64
        annotation(d, 3)["bbox"] = [10**400, 0, 5, 5]

    index = read_mutated(tmp_path, mutate)
    assert sorted(problems(index, "refused")) == [("annotation id 2", "wrong_type"), ("annotation id 3", "wrong_type")]
    assert sorted(problems(index, "repaired")) == [("annotations[0]", "wrong_type"), ("image id 2", "bad_size")]
    assert index.records[0].annotation_ids == [5] and index.records[1].annotation_ids == [4]
    data = coco_dict()
    data["images"][1]["width"] = 10**400
    path = tmp_path / "sizes.json"
    path.write_text(json.dumps(data))
    assert ("image id 2", "bad_size") in problems(read_coco(path, check_images=False), "refused")


def test_file_name_too_long_is_a_missing_image(tmp_path):
    index = read_mutated(tmp_path, lambda d: d["images"][0].update(file_name="x" * 5000 + ".png"))
    assert ("image id 1", "missing_image") in problems(index, "refused")
    write_voc_dataset(tmp_path / "voc", splits={"train": ["a", "y" * 5000]})
    assert ("line 2", "missing_annotation") in problems(read_voc(tmp_path / "voc", "train"))
    yolo = yolo_with(tmp_path / "yolo", ["9" * 400 + " 0.5 0.5 0.2 0.2"])
    assert problems(yolo) == [("line 1", "wrong_type")]
