"""Segmentation readers (image/mask folders, StreetHazards) and the synthetic streets generator."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiondoctor.data.formats.masks import read_mask_folder
from visiondoctor.data.formats.streethazards import read_streethazards
from visiondoctor.data.seg_samples import DataError
from visiondoctor.data.synth import generate
from visiondoctor.data.synth.streets import generate_streets


def _pair(root: Path, stem: str, mask: Image.Image | None, size=(20, 16)) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(root / "images" / f"{stem}.jpg")
    if mask is not None:
        mask.save(root / "masks" / f"{stem}.png")


def _mask(values: np.ndarray, mode: str = "L") -> Image.Image:
    return Image.fromarray(values.astype(np.uint8), mode="L").convert(mode) if mode != "L" else Image.fromarray(values.astype(np.uint8))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "classes.txt").write_text("road\ncar\n# comment\n\nperson\n")
    good = np.zeros((16, 20), np.uint8)
    good[4:8, 5:9] = 2
    good[0, 0] = 255  # ignore
    _pair(tmp_path, "a_good", _mask(good))
    _pair(tmp_path, "b_wrong_size", _mask(np.zeros((10, 10))))
    bad = good.copy()
    bad[1, 1] = 7
    _pair(tmp_path, "c_out_of_range", _mask(bad))
    rgb = np.zeros((16, 20, 3), np.uint8)
    rgb[..., 0] = 200
    _pair(tmp_path, "d_rgb", Image.fromarray(rgb))
    pal = Image.fromarray(good.clip(0, 2)).convert("P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    _pair(tmp_path, "e_palette", pal)
    _pair(tmp_path, "f_grey_as_rgb", Image.fromarray(np.stack([good.clip(0, 2)] * 3, -1)))
    _pair(tmp_path, "g_no_mask", None)
    return tmp_path


def test_mask_folder_keeps_good_and_names_every_bad_file(folder: Path) -> None:
    index = read_mask_folder(folder)
    assert index.class_names == ["road", "car", "person"]
    assert index.num_classes == 3
    assert sorted(Path(r.file_name).stem for r in index.records) == ["a_good", "e_palette", "f_grey_as_rgb"]
    assert index.total_files == 7
    refused = {Path(p.file).stem: p.message for p in index.refused}
    assert set(refused) == {"b_wrong_size", "c_out_of_range", "d_rgb", "g_no_mask"}
    assert "10x10" in refused["b_wrong_size"] and "20x16" in refused["b_wrong_size"]
    assert "7 (1 px)" in refused["c_out_of_range"]
    assert "colour" in refused["d_rgb"] and "mode RGB" in refused["d_rgb"]
    assert "no mask" in refused["g_no_mask"]
    assert any(p.action == "repaired" and "f_grey_as_rgb" in p.file for p in index.problems)
    assert any(p.action == "info" and "palette indices are read as labels" in p.message for p in index.problems)


def test_mask_folder_refuses_without_class_file_or_usable_pair(tmp_path: Path) -> None:
    _pair(tmp_path, "x", _mask(np.zeros((16, 20))))
    with pytest.raises(DataError, match="class-names file"):
        read_mask_folder(tmp_path)
    (tmp_path / "classes.txt").write_text("a\n")
    (tmp_path / "masks" / "x.png").unlink()
    _pair(tmp_path, "x", _mask(np.full((16, 20), 3)))
    with pytest.raises(DataError, match="no usable image/mask pair") as err:
        read_mask_folder(tmp_path)
    assert "x.png" in str(err.value) and "out of range" in str(err.value)
    with pytest.raises(DataError, match="ignore index 0 is also label 0"):
        read_mask_folder(tmp_path, ignore_index=0)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_streets_deterministic_and_read_as_streethazards(tmp_path: Path) -> None:
    small = dict(num_val=2, num_test=4, image_size=64, height=48)
    generate("streets", tmp_path / "a", num_images=4, seed=3, **small)  # the CLI's dispatcher
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_streets(b, num_train=4, seed=3, **small)
    generate_streets(c, num_train=4, seed=4, **small)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    splits = {s: read_streethazards(a, s) for s in ("train", "val", "test")}
    assert [len(ix.records) for ix in splits.values()] == [4, 2, 4]
    test = splits["test"]
    assert test.class_names[13] == "anomaly" and test.anomaly_labels == (13,) and test.num_classes == 13
    lut = test.lut()

    def labels(index):
        return np.concatenate([lut[np.asarray(Image.open(r.mask_path))].ravel() for r in index.records])

    assert 13 not in labels(splits["train"]) and 13 not in labels(splits["val"])
    test_labels = labels(test)
    assert (test_labels == 13).sum() > 0
    assert test_labels.max() <= 13 and len(np.unique(labels(splits["train"]))) >= 10


def test_streethazards_shift_and_problems(tmp_path: Path) -> None:
    img_dir = tmp_path / "test" / "images" / "test" / "t5"
    ann_dir = tmp_path / "test" / "annotations" / "test" / "t5"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    raw = np.array([[1, 14, 0], [7, 8, 2]], np.uint8)
    Image.new("RGB", (3, 2)).save(img_dir / "0.png")
    Image.fromarray(raw).save(ann_dir / "0.png")
    Image.new("RGB", (3, 2)).save(img_dir / "1.png")
    Image.fromarray(np.full((2, 3), 15, np.uint8)).save(ann_dir / "1.png")
    index = read_streethazards(tmp_path, "test")
    assert len(index.records) == 1 and index.class_names[0] == "unlabeled"
    assert index.lut()[raw].tolist() == [[0, 13, 255], [6, 7, 1]]
    assert len(index.refused) == 1 and "1.png" in index.refused[0].file and "15" in index.refused[0].message
    with pytest.raises(DataError, match="train/images/training"):
        read_streethazards(tmp_path, "train")
