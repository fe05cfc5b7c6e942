"""Segmentation layouts (CamVid, Cityscapes, ADE20K, VOC, image/mask folders, StreetHazards) read
from tiny copies written here, the void value found in masks, and the validation report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiondoctor.data.formats import ade20k, camvid, cityscapes, masks, streethazards, voc_segmentation
from visiondoctor.data.seg_samples import DataError, SegmentationIndex
from visiondoctor.data.seg_validate import format_segmentation_report, validate_segmentation
from visiondoctor.data.seg_void import infer_void_value

LAYOUTS = [masks, streethazards, camvid, cityscapes, ade20k, voc_segmentation]
H, W = 12, 16


def write_pair(image: Path, mask: Path | None, values: np.ndarray, palette: bool = False) -> None:
    image.parent.mkdir(parents=True, exist_ok=True)
    v = values.astype(np.int64)
    colours = np.stack([v * 7 % 256, v * 53 % 256, 255 - v], axis=-1).astype(np.uint8)
    Image.fromarray(colours).save(image)  # the picture the mask labels, so different masks make different images
    if mask is None:
        return
    mask.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(values.astype(np.uint8))
    if palette:
        im = im.convert("P")
        im.putpalette([c for i in range(256) for c in (i, (37 * i) % 256, 255 - i)])
    im.save(mask)


def regions(*values: int, border: int | None = None, width: int = W) -> np.ndarray:
    """Vertical bands of `values`, optionally with a 2 px `border` value between bands."""
    out = np.zeros((H, width), np.uint8)
    edges = np.linspace(0, width, len(values) + 1).astype(int)
    for v, lo, hi in zip(values, edges, edges[1:]):
        out[:, lo:hi] = v
    if border is not None:
        for x in edges[1:-1]:
            out[:, x - 1:x + 1] = border
    return out


def loaded_labels(index: SegmentationIndex) -> set[int]:
    lut = index.lut()
    return set(np.unique(np.concatenate([lut[masks.load_record_mask(r)].ravel() for r in index.records])).tolist())


# ----- fixtures: each layout as its dataset ships it ------------------------------------------------------------

@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    root = tmp_path / "CamVid"
    write_pair(root / "train" / "0001TP_006690.png", root / "trainannot" / "0001TP_006690.png", regions(0, 3, 11, 10))
    write_pair(root / "train" / "0001TP_006720.png", root / "trainannot" / "0001TP_006720.png", regions(8, 12))  # 12: no class
    write_pair(root / "val" / "0016E5_07959.png", root / "valannot" / "0016E5_07959.png", regions(4, 5, 11))
    (root / "test").mkdir()  # images without annotations: not a split
    (root / "train.txt").write_text("/SegNet/CamVid/train/0001TP_006690.png /SegNet/CamVid/trainannot/0001TP_006690.png\n")
    return root


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    for split, city, frame, ids in (("train", "aachen", "000000_000019", (7, 26, 0, 1, 23)),
                                    ("train", "bochum", "000000_000313", (8, 33, 9)),
                                    ("val", "frankfurt", "000000_000294", (24, 7, 3))):
        stem = f"{city}_{frame}"
        write_pair(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                   root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", regions(*ids))
        (root / "gtFine" / split / city / f"{stem}_gtFine_color.png").write_bytes(b"")  # other gtFine files: ignored
    # val also has train-id masks (cityscapesScripts' createTrainIdLabelImgs): those are read instead
    write_pair(root / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png",
               root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelTrainIds.png",
               regions(11, 0, 255))
    return root


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    write_pair(root / "images" / "training" / "ADE_train_00000001.jpg",
               root / "annotations" / "training" / "ADE_train_00000001.png", regions(1, 0, 150, 13))
    write_pair(root / "images" / "training" / "ADE_train_00000002.jpg",
               root / "annotations" / "training" / "ADE_train_00000002.png", regions(3, 151))  # 151: no class
    write_pair(root / "images" / "validation" / "ADE_val_00000001.jpg",
               root / "annotations" / "validation" / "ADE_val_00000001.png", regions(2, 0))
    (root / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    return root


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    object_with_border = regions(0, 15, 0, border=255)  # a person outlined by the void border
    write_pair(root / "JPEGImages" / "2007_000032.jpg", root / "SegmentationClass" / "2007_000032.png",
               object_with_border, palette=True)
    write_pair(root / "JPEGImages" / "2007_000039.jpg", root / "SegmentationClass" / "2007_000039.png",
               regions(0, 20), palette=True)
    write_pair(root / "JPEGImages" / "2007_000063.jpg", None, regions(0))  # no mask
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n2007_000063\n\n")
    (lists / "val.txt").write_text("2007_000039\n2007_999999\n")  # the second id has no files
    (lists / "trainval.txt").write_text("2007_000032\n2007_000039\n")
    (root / "Annotations").mkdir()  # detection annotations may sit in the same folder
    return root


@pytest.fixture
def streethazards_root(tmp_path: Path) -> Path:
    root = tmp_path / "streethazards"
    write_pair(root / "train" / "images" / "training" / "t1" / "0.png",
               root / "train" / "annotations" / "training" / "t1" / "0.png", regions(1, 8, 0))
    write_pair(root / "test" / "images" / "test" / "t5" / "0.png",
               root / "test" / "annotations" / "test" / "t5" / "0.png", regions(14, 2))
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "folders"
    (root / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(["background", "cat", "dog"]) + "\n")
    write_pair(root / "train" / "images" / "a.jpg", root / "train" / "masks" / "a.png", regions(0, 1, 2, border=255))
    write_pair(root / "val" / "images" / "b.jpg", root / "val" / "masks" / "b.png", regions(0, 2))
    return root


# ----- detection of the layout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("camvid_root", camvid), ("cityscapes_root", cityscapes), ("ade_root", ade20k), ("voc_root", voc_segmentation),
    ("streethazards_root", streethazards), ("folder_root", masks)])
def test_each_layout_is_detected_by_its_own_reader_only(request, name, expected) -> None:
    root = request.getfixturevalue(name)
    assert [m.NAME for m in LAYOUTS if m.detect(root)] == [expected.NAME]


def test_layout_names_are_distinct_and_interfaces_complete() -> None:
    assert len({m.NAME for m in LAYOUTS}) == len(LAYOUTS)
    for module in LAYOUTS:
        assert callable(module.detect) and callable(module.list_splits) and callable(module.read)


# ----- each layout ------------------------------------------------------------------------------------------------

def test_camvid(camvid_root: Path) -> None:
    assert camvid.list_splits(camvid_root) == ["train", "val"]
    train = camvid.read(camvid_root, "train")
    assert train.num_classes == 11 and train.class_names[0] == "Sky" and train.class_names[10] == "Bicyclist"
    assert (train.void_values, train.void_source, train.ignore_index) == ((11,), "layout", 11)
    assert len(train.records) == 1 and train.total_files == 2
    assert "12 (" in train.refused[0].message and "0001TP_006720" in train.refused[0].file
    assert loaded_labels(train) == {0, 3, 10, 11}
    assert train.outside_values == {12: H * W // 2}
    remapped = camvid.read(camvid_root, "validation", ignore_index=255)  # an alias of val
    assert remapped.ignore_index == 255 and loaded_labels(remapped) == {4, 5, 255}
    assert remapped.void_source == "layout"  # the void value is CamVid's 11; only the label it maps to changed
    with pytest.raises(DataError, match="no camvid split 'test'"):
        camvid.read(camvid_root, "test")
    with pytest.raises(DataError, match="ignore index 3 is also a camvid label"):
        camvid.read(camvid_root, "train", ignore_index=3)


def test_cityscapes_label_ids_to_train_ids(cityscapes_root: Path) -> None:
    assert cityscapes.list_splits(cityscapes_root) == ["train", "val"]
    train = cityscapes.read(cityscapes_root, "train")
    assert train.num_classes == 19 and train.class_names[0] == "road" and train.class_names[18] == "bicycle"
    assert train.void_source == "layout" and train.ignore_index == 255
    assert 0 in train.void_values and 9 in train.void_values and 7 not in train.void_values and len(train.void_values) == 15
    lut = train.lut()
    assert [int(lut[i]) for i in (7, 26, 0, 1, 23, 8, 33, 9)] == [0, 13, 255, 255, 10, 1, 18, 255]
    assert loaded_labels(train) == {0, 1, 10, 13, 18, 255}
    assert len(train.records) == 2 and train.records[0].file_name.endswith("aachen_000000_000019_leftImg8bit.png")


def test_cityscapes_prefers_train_id_masks_when_every_image_has_one(cityscapes_root: Path) -> None:
    val = cityscapes.read(cityscapes_root, "val", ignore_index=19)
    assert val.records[0].mask_path.name.endswith("_gtFine_labelTrainIds.png")
    assert val.void_values == (255,) and loaded_labels(val) == {11, 0, 19}


def test_ade20k_shift_and_class_names(ade_root: Path) -> None:
    assert ade20k.list_splits(ade_root) == ["training", "validation"]
    train = ade20k.read(ade_root, "train")  # the usual name of "training"
    assert train.num_classes == 150 and train.class_names[0] == "class_001" and train.class_names[149] == "class_150"
    assert (train.void_values, train.void_source, train.ignore_index) == ((0,), "layout", 255)
    assert loaded_labels(train) == {0, 149, 12, 255}
    assert len(train.records) == 1 and "151 (" in train.refused[0].message
    rows = ["Idx,Ratio,Train,Val,Name"] + [f"{i},0.01,10,1,name{i};synonym" for i in range(1, 151)]
    (ade_root / "objectInfo150.csv").write_text("\n".join(rows) + "\n")
    val = ade20k.read(ade_root, "val")
    assert val.class_names[0] == "name1" and val.class_names[149] == "name150"
    assert loaded_labels(val) == {1, 255}
    (ade_root / "objectInfo150.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(DataError, match="objectInfo150.csv: lists 149 classes"):
        ade20k.read(ade_root, "val")


def test_ade20k_reads_the_archive_tab_separated_names(ade_root: Path) -> None:
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.01\t10\t1\tthing {i};other" for i in range(1, 151)]
    (ade_root / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    assert ade20k.read(ade_root, "validation").class_names[4] == "thing 5"


def test_voc_segmentation(voc_root: Path) -> None:
    assert voc_segmentation.list_splits(voc_root) == ["train", "trainval", "val"]
    train = voc_segmentation.read(voc_root, "train")
    assert train.num_classes == 21 and train.class_names[0] == "background" and train.class_names[20] == "tvmonitor"
    assert (train.void_values, train.void_source, train.ignore_index) == ((255,), "layout", 255)
    assert loaded_labels(train) == {0, 15, 255}
    assert [Path(p.file).name for p in train.refused] == ["2007_000063.jpg"]  # its mask is missing
    assert "SegmentationClass/2007_000063.png does not exist" in train.refused[0].message
    val = voc_segmentation.read(voc_root, "val")
    assert len(val.records) == 1 and any("2007_999999" in p.file for p in val.refused)
    assert loaded_labels(val) == {0, 20}
    with pytest.raises(DataError, match="split list not found"):
        voc_segmentation.read(voc_root, "test")


def test_streethazards_interface(streethazards_root: Path) -> None:
    assert streethazards.list_splits(streethazards_root) == ["train", "test"]
    test = streethazards.read(streethazards_root, "test")
    assert test.anomaly_labels == (13,) and (test.void_values, test.void_source) == ((0,), "layout")
    assert loaded_labels(test) == {13, 1}
    train = streethazards.read(streethazards_root, "training", ignore_index=200)
    assert loaded_labels(train) == {0, 7, 200}


def test_mask_folders_interface_and_void_found(folder_root: Path) -> None:
    assert masks.list_splits(folder_root) == ["train", "val"]
    train = masks.read(folder_root, "train")
    assert (train.void_values, train.void_source, train.ignore_index) == ((255,), "found in masks", 255)
    assert "255" in train.void_evidence and "thin borders" in train.void_evidence
    val = masks.read(folder_root, "val")
    assert (val.void_values, val.void_source) == ((), "none") and "no void value" in val.void_evidence
    configured = masks.read(folder_root, "train", ignore_index=255)
    assert configured.void_source == "configured"


# ----- the void value of image/mask folders -------------------------------------------------------------------------

def _folder(root: Path, names: list[str], *arrays: np.ndarray) -> Path:
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    for k, values in enumerate(arrays):
        write_pair(root / "images" / f"{k}.png", root / "masks" / f"{k}.png", values)
    return root


def test_void_found_on_thin_borders_right_after_the_classes(tmp_path: Path) -> None:
    """Value 3 with classes 0..2 is not far above them, but it only outlines regions: void."""
    root = _folder(tmp_path / "d", ["a", "b", "c"], regions(0, 1, 2, border=3), regions(2, 0, border=3))
    index = masks.read(root, "")
    assert (index.void_values, index.void_source, index.ignore_index) == ((3,), "found in masks", 3)
    assert infer_void_value(index)[0] == 3
    assert len(index.records) == 2


def test_a_region_value_next_to_the_classes_is_not_taken_for_void(tmp_path: Path) -> None:
    """Value 3 filling half the image is more likely a class missing from classes.txt: masks refused."""
    root = _folder(tmp_path / "d", ["a", "b", "c"], regions(0, 1, 2), regions(2, 3))
    index = masks.read(root, "")
    assert index.void_values == () and index.void_source == "none"
    assert "none is void-like" in index.void_evidence and "ignore_index" in index.void_evidence
    assert len(index.records) == 1 and index.outside_values == {3: H * W // 2}
    assert any(p.kind == "void_value" for p in index.problems)


def test_void_far_above_the_classes_even_as_regions(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", ["a", "b"], regions(0, 200), regions(1, 0))
    index = masks.read(root, "")
    assert index.void_values == (200,) and "far above" in index.void_evidence


def test_two_void_like_values_pick_the_thin_and_far_one_else_none(tmp_path: Path) -> None:
    # 40 fills a region far above the classes; 255 outlines regions and is far above: 255 is the void
    root = _folder(tmp_path / "a", ["a", "b"], regions(40, 0, 1, border=255, width=64), regions(0, 1, border=255))
    index = masks.read(root, "")
    assert index.void_values == (255,) and "255 is the void-like one" in index.void_evidence
    assert [Path(p.file).name for p in index.refused] == ["0.png"] and 40 in index.outside_values
    # 100 and 200 both fill regions far above the classes: no way to tell which is void
    index = masks.read(_folder(tmp_path / "b", ["a", "b"], regions(0, 100, 200, width=64), regions(0, 1)), "")
    assert index.void_values == () and "several are void-like" in index.void_evidence
    assert len(index.records) == 1


# ----- the validation report ---------------------------------------------------------------------------------------

def test_validate_segmentation_lists_each_split(camvid_root: Path) -> None:
    splits = {s: camvid.read(camvid_root, s) for s in camvid.list_splits(camvid_root)}
    report = validate_segmentation(splits, shared_images=True)
    train, val = report.splits
    assert (train.split, train.images_found, train.usable, train.refused_images) == ("train", 2, 1, 1)
    assert train.void_values == [11] and train.void_source == "layout" and train.void_pixels == H * W // 4
    assert train.outside_values == {12: H * W // 2}
    pixels = {c["name"]: c["pixels"] for c in train.classes}
    assert pixels["Sky"] == pixels["Road"] == pixels["Bicyclist"] == H * W // 4 and pixels["Tree"] == 0
    assert "Tree" in train.empty_classes and "Sky" not in train.empty_classes
    assert train.problem_counts["label_out_of_range"] == {"refused": 1}
    assert any("0001TP_006720" in f for f in train.problems_by_file)
    assert report.shared == [] and not report.ok  # a refused mask
    text = format_segmentation_report(report)
    for expected in ("train: ", "1 images usable of 2 (1 refused), 11 classes",
                     "void: value 11 (layout) -> ignore index 11", "why: CamVid", "Sky", "(no pixels)",
                     "values outside the classes and void (their masks refused): 12 (96 px)",
                     "label_out_of_range: 1 refused", "problems by file:", "0001TP_006720.png",
                     "val: ", "images shared between splits: none"):
        assert expected in text, expected
    assert report.to_dict()["splits"][0]["refused_images"] == 1


def test_validate_segmentation_one_index_and_shared_images(folder_root: Path) -> None:
    same = folder_root / "val" / "images" / "b.jpg"
    (folder_root / "train" / "images" / "b.jpg").write_bytes(same.read_bytes())  # val's image, also in train
    (folder_root / "train" / "masks" / "b.png").write_bytes((folder_root / "val" / "masks" / "b.png").read_bytes())
    single = validate_segmentation(masks.read(folder_root, "train"))
    assert single.splits[0].split == "" and single.shared is None
    assert "problems: none" in format_segmentation_report(single)
    report = validate_segmentation({s: masks.read(folder_root, s) for s in ("train", "val")}, shared_images=True)
    assert [(s.kind, s.split_a, s.path_a.name, s.split_b) for s in report.shared] == [("exact", "train", "b.jpg", "val")]
    assert "images shared between splits: 1 pairs (1 exact)" in format_segmentation_report(report)
    assert not report.ok
