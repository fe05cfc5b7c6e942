"""EXIF orientation: sizes, pixels, boxes and masks all refer to the displayed image."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFile

from visiondoctor.data.dataset import DetectionDataset
from visiondoctor.data.formats import masks
from visiondoctor.data.formats.coco import read_coco
from visiondoctor.data.images import image_size, load_rgb, read_header
from visiondoctor.data.samples import CategoryMap

RED = (220, 20, 20)
# Stored 40 wide x 24 high; a red block at stored x 4..12, y 14..22. Orientation 6 means "turn 90 degrees
# clockwise to display": stored (x, y) -> displayed (23 - y, x), so the displayed image is 24 wide x 40 high
# and the block lies at displayed x 2..10, y 4..12.
STORED_W, STORED_H = 40, 24
DISPLAYED_BOX = [2, 4, 8, 8]  # COCO xywh, in the displayed image


def rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    stored = np.full((STORED_H, STORED_W, 3), 128, np.uint8)
    stored[14:22, 4:12] = RED
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    return path


def mean_colour(image, box_xyxy) -> np.ndarray:
    x1, y1, x2, y2 = (int(round(float(v))) for v in box_xyxy)
    return image[:, y1:y2, x1:x2].float().mean(dim=(1, 2)).numpy()


def test_size_and_pixels_are_the_displayed_image(tmp_path: Path) -> None:
    path = rotated_jpeg(tmp_path / "phone.jpg")
    header = read_header(path)
    assert (header.stored_size, header.orientation) == ((STORED_W, STORED_H), 6)
    assert image_size(path) == (STORED_H, STORED_W)
    image = load_rgb(path)
    assert tuple(image.shape) == (3, STORED_W, STORED_H)  # (3, H, W) of the displayed image
    with Image.open(path) as im:
        assert im.size == (STORED_W, STORED_H)  # the file itself is unchanged


def test_box_in_displayed_coordinates_lies_on_its_object(tmp_path: Path) -> None:
    rotated_jpeg(tmp_path / "phone.jpg")
    coco = {"images": [{"id": 1, "file_name": "phone.jpg", "width": STORED_H, "height": STORED_W}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": DISPLAYED_BOX, "area": 64, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "block"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    index = read_coco(tmp_path / "ann.json")
    assert index.problems == []  # the stated size is the displayed size: no mismatch
    dataset = DetectionDataset(index, CategoryMap.from_categories(index.categories))
    image, target = dataset[0]
    assert tuple(image.shape[-2:]) == (STORED_W, STORED_H)
    inside = mean_colour(image, target["boxes"][0])
    assert np.abs(inside - np.array(RED)).max() < 20, inside


def test_annotation_of_the_stored_size_says_why(tmp_path: Path) -> None:
    rotated_jpeg(tmp_path / "phone.jpg")
    coco = {"images": [{"id": 1, "file_name": "phone.jpg", "width": STORED_W, "height": STORED_H}],
            "annotations": [], "categories": [{"id": 1, "name": "block"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    (problem,) = [p for p in read_coco(tmp_path / "ann.json").problems if p.kind == "size_mismatch"]
    assert "EXIF orientation 6" in problem.message
    assert "un-rotated" in problem.message


def _mask_dataset(root: Path, mask: np.ndarray, orientation: int) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nblock\n")
    rotated_jpeg(root / "images" / "a.jpg", orientation)
    Image.fromarray(mask).save(root / "masks" / "a.png")
    return root


def test_mask_of_the_displayed_size_is_used_as_stored(tmp_path: Path) -> None:
    displayed = np.zeros((STORED_W, STORED_H), np.uint8)  # 24 wide x 40 high
    displayed[4:12, 2:10] = 1
    index = masks.read(_mask_dataset(tmp_path / "d", displayed, 6), "")
    (record,) = index.records
    assert (record.width, record.height, record.mask_orientation) == (STORED_H, STORED_W, 1)
    assert (masks.load_record_mask(record) == displayed).all()


def test_mask_drawn_on_the_stored_pixels_is_turned_like_its_image(tmp_path: Path) -> None:
    stored = np.zeros((STORED_H, STORED_W), np.uint8)
    stored[14:22, 4:12] = 1  # where the block is in the stored pixels
    index = masks.read(_mask_dataset(tmp_path / "d", stored, 6), "")
    (record,) = index.records
    assert record.mask_orientation == 6
    assert any(p.kind == "mask_orientation" and p.action == "repaired" for p in index.problems)
    mask = masks.load_record_mask(record)
    image = load_rgb(record.path)
    assert mask.shape == tuple(image.shape[-2:])
    red = (image[0] > 180) & (image[1] < 80)
    assert (red.numpy() == (mask == 1)).mean() > 0.97  # the mask lies on the block in the displayed image


@pytest.mark.parametrize("orientation", [2, 3, 4])
def test_same_size_orientations_are_noted_once(tmp_path: Path, orientation: int) -> None:
    mask = np.zeros((STORED_H, STORED_W), np.uint8)
    index = masks.read(_mask_dataset(tmp_path / "d", mask, orientation), "")
    assert index.records[0].mask_orientation == 1
    assert [p.kind for p in index.problems if p.kind == "exif_orientation"] == ["exif_orientation"]


def test_png_without_exif_chunk_is_not_decoded_for_its_size(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (7, 5)).save(tmp_path / "a.png")
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (_ for _ in ()).throw(AssertionError("decoded")))
    assert image_size(tmp_path / "a.png") == (7, 5)
