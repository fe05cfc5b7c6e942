"""`visiondoctor data validate ROOT`: every split of a detection or segmentation dataset, the images the splits
share, the segmentation void value and where it came from; exit 1 when records would be lost."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from datafixtures import coco_dict, write_coco_dataset
from visiondoctor.cli import main
from visiondoctor.data.validate import validate_dataset


def _coco_splits(root: Path) -> Path:
    """train / valid / test COCO folders (Roboflow layout); test holds a byte copy of a training image."""
    write_coco_dataset(root / "train", coco_dict([(64, 48), (80, 60)]))
    write_coco_dataset(root / "valid", coco_dict([(72, 40)]))
    data = coco_dict([(64, 48)])
    data["images"][0]["file_name"] = "copied.png"
    write_coco_dataset(root / "test", data)
    shutil.copyfile(root / "train" / "img1.png", root / "test" / "copied.png")
    return root


def test_every_detection_split_and_the_images_they_share(tmp_path: Path, capsys):
    root = _coco_splits(tmp_path / "coco")
    assert main(["data", "validate", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.index("== train ==") < out.index("== valid ==") < out.index("== test ==")
    assert "images shared between splits: 1 pairs (1 exact)" in out and "copied.png" in out
    assert "no record would be lost" in out
    report = validate_dataset(root)
    assert report.task == "detection" and [s for s, _ in report.detection] == ["train", "valid", "test"]


def test_records_that_would_be_lost_exit_1(tmp_path: Path, capsys):
    root = _coco_splits(tmp_path / "coco")
    path = root / "valid" / "_annotations.coco.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 99  # not a listed category: refused
    path.write_text(json.dumps(data))
    assert main(["data", "validate", str(root)]) == 1
    out = capsys.readouterr().out
    assert "unknown category id 99" in out and "records that would be lost: 1" in out
    assert main(["data", "validate", str(root), "--split", "train"]) == 0  # one split still checks just that one


def _mask_split(root: Path, stems: list[str], values: list[int], shades: list[int]) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    ramp = np.arange(16 * 20, dtype=np.uint8).reshape(16, 20)
    for i, stem in enumerate(stems):
        picture = np.stack([ramp * (1 + shades[i] % 3), np.full_like(ramp, shades[i]), ramp[::-1]], axis=-1)
        Image.fromarray(picture).save(root / "images" / f"{stem}.png")
        mask = np.zeros((16, 20), np.uint8)
        mask[4:10, 4:12] = values[i % len(values)]
        mask[0, :] = 255  # a border of void, as Pascal VOC draws it
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def test_segmentation_splits_with_their_void_value(tmp_path: Path, capsys):
    root = tmp_path / "seg"
    root.mkdir()
    (root / "classes.txt").write_text("road\ncar\n")
    _mask_split(root / "train", ["a", "b", "c"], [1], [0, 100, 200])
    _mask_split(root / "val", ["d", "e"], [1], [0, 160])  # d is a copy of a
    assert main(["data", "validate", str(root)]) == 0
    out = capsys.readouterr().out
    assert "segmentation dataset (masks layout)" in out
    assert out.index("train: ") < out.index("val: ")
    assert "void: value 255 (found in masks) -> ignore index 255" in out
    assert "images shared between splits: 1 pairs (1 exact)" in out and "d.png" in out

    _mask_split(root / "val", ["f"], [7], [60])  # a value that is neither a class nor void: that mask is refused
    assert main(["data", "validate", str(root)]) == 1
    assert "records that would be lost" in capsys.readouterr().out


def test_a_path_that_is_no_dataset_is_a_clear_error(tmp_path: Path, capsys):
    assert main(["data", "validate", str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in " ".join(capsys.readouterr().err.split())  # the console wraps lines
    (tmp_path / "empty").mkdir()
    assert main(["data", "validate", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "detection" in err and "segmentation" in err
