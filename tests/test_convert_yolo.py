"""`visiondoctor data convert --to yolo`: every split of a dataset in Ultralytics' layout, with the
training split's class order, Roboflow's `valid` folder written as `val`."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from datafixtures import coco_dict, write_coco_dataset
from visiondoctor.cli import main
from visiondoctor.data.formats import load_detection


def roboflow_export(root: Path) -> Path:
    """train/ valid/ test/ with _annotations.coco.json each; valid lists only `square` (id 2), so
    its own class order would put square at index 0 instead of the training split's 1."""
    write_coco_dataset(root / "train")
    write_coco_dataset(root / "test")
    valid = coco_dict()
    valid["categories"] = [c for c in valid["categories"] if c["name"] == "square"]
    valid["annotations"] = [a for a in valid["annotations"] if a["category_id"] == 2]
    write_coco_dataset(root / "valid", valid)
    return root


def test_every_split_is_written_with_the_training_split_class_order(tmp_path, capsys):
    source = roboflow_export(tmp_path / "export")
    out = tmp_path / "yolo"
    assert main(["data", "convert", str(source), "--to", "yolo", "--out", str(out)]) == 0
    assert "written split val: 2 images, 2 boxes" in capsys.readouterr().err
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "circle", 1: "square"}
    assert {k: data[k] for k in ("train", "val", "test")} == {s: f"images/{s}" for s in ("train", "val", "test")}
    assert not (out / "images" / "valid").exists()
    val_labels = [line.split()[0] for f in sorted((out / "labels" / "val").glob("*.txt"))
                  for line in f.read_text().splitlines()]
    assert val_labels == ["1", "1"]  # square is class 1, as in training, not 0 as valid's own list says
    for split, source_split in (("train", "train"), ("val", "valid"), ("test", "test")):
        back, original = load_detection(out, "yolo", split), load_detection(source, "coco", source_split)
        boxes = sorted((r.file_name, tuple(round(v, 3) for v in b)) for r in back.records for b in r.boxes)
        assert boxes == sorted((r.file_name, tuple(round(v, 3) for v in b)) for r in original.records for b in r.boxes)
        gt = json.loads((out / f"gt_{split}.coco.json").read_text())
        assert sorted(im["id"] for im in gt["images"]) == sorted(r.image_id for r in original.records)


def test_one_split_or_a_single_file(tmp_path):
    source = roboflow_export(tmp_path / "export")
    assert main(["data", "convert", str(source), "--split", "valid", "--to", "yolo", "--out", str(tmp_path / "v")]) == 0
    assert sorted(p.name for p in (tmp_path / "v" / "images").iterdir()) == ["val"]
    single = write_coco_dataset(tmp_path / "flat", name="instances.json")
    assert main(["data", "convert", str(single), "--split", "test", "--to", "yolo", "--out", str(tmp_path / "s")]) == 0
    assert yaml.safe_load((tmp_path / "s" / "data.yaml").read_text())["test"] == "images/test"
    # the folder is refused rather than mixed with a second conversion
    assert main(["data", "convert", str(single), "--split", "test", "--to", "yolo", "--out", str(tmp_path / "s")]) == 2


def test_coco_output_is_unchanged(tmp_path):
    source = roboflow_export(tmp_path / "export")
    out = tmp_path / "val.json"
    assert main(["data", "convert", str(source), "--split", "valid", "--to", "coco", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["images"]) == 2
