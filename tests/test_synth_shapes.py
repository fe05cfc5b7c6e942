"""The synthetic shapes generator: deterministic, valid COCO, the variety the issue asks for."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from visiondoctor.data.synth.shapes import DEFAULT_CLASSES, PRESETS, SUMMARY_FILE, generate_shapes

SMALL = dict(num_train=40, num_val=6, num_test=6, image_size=128, max_size=64)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate_shapes(out, seed=3, **SMALL)
    return out


def _coco(root: Path, split: str = "train") -> dict:
    return json.loads((root / split / "_annotations.coco.json").read_text())


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path, shapes):
    again = tmp_path / "again"
    generate_shapes(again, seed=3, **SMALL)
    assert _all_bytes(again) == _all_bytes(shapes)
    other = tmp_path / "other"
    generate_shapes(other, seed=4, **SMALL)
    assert _all_bytes(other)["train/train_000000.jpg"] != _all_bytes(shapes)["train/train_000000.jpg"]


def test_layout_splits_and_categories(shapes):
    for split, n in (("train", 40), ("val", 6), ("test", 6)):
        coco = _coco(shapes, split)
        assert len(coco["images"]) == n
        for image in coco["images"]:
            assert (shapes / split / image["file_name"]).is_file()
    cats = _coco(shapes)["categories"]
    assert [c["id"] for c in cats] == list(range(1, len(DEFAULT_CLASSES) + 1))
    assert [c["name"] for c in cats] == list(DEFAULT_CLASSES)


def test_boxes_inside_images_and_match_pixels(shapes):
    coco = _coco(shapes)
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for image in coco["images"][:3]:
        with Image.open(shapes / "train" / image["file_name"]) as img:
            assert img.size == (image["width"], image["height"]) and img.mode == "RGB"
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        W, H = sizes[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H, a
        assert a["area"] == w * h and a["iscrowd"] == 0
        assert 0 < a["visible_fraction"] <= 1


def test_variety_all_classes_small_objects_and_occlusion(shapes):
    coco = _coco(shapes)
    assert {a["category_id"] for a in coco["annotations"]} == set(range(1, len(DEFAULT_CLASSES) + 1))
    sides = [math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in coco["annotations"]]
    assert min(sides) <= 16 and max(sides) >= 40
    assert any(a["visible_fraction"] < 0.95 for a in coco["annotations"])  # partial occlusion happens
    assert len({tuple(a["bbox"]) for a in coco["annotations"]}) > 0.9 * len(coco["annotations"])


def test_summary_counts_agree_with_the_files(shapes):
    summary = json.loads((shapes / SUMMARY_FILE).read_text())
    for split in ("train", "val", "test"):
        coco = _coco(shapes, split)
        s = summary["splits"][split]
        assert s["images"] == len(coco["images"])
        assert s["boxes"] == len(coco["annotations"]) == sum(s["per_class"].values()) == sum(s["size_histogram"])
        assert s["occluded_kept"] == sum(a["visible_fraction"] < 0.999 for a in coco["annotations"])
    assert summary["occluded_dropped"] == sum(s["occluded_dropped"] for s in summary["splits"].values())


def test_almost_hidden_objects_are_dropped_and_counted(tmp_path):
    # Force heavy overlap with no retries: some objects end up mostly hidden.
    out = tmp_path / "crowded"
    generate_shapes(out, num_train=20, num_val=0, num_test=0, image_size=96, max_size=60, min_objects=6,
                    max_objects=8, occlusion_prob=1.0, max_place_tries=1, min_visible=0.5, seed=1)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["occluded_dropped"] > 0
    assert not (out / "val").exists()
    coco = _coco(out)
    assert all(a["visible_fraction"] >= 0.5 for a in coco["annotations"])


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown shape"):
        generate_shapes(tmp_path, num_train=1, num_val=0, num_test=0, classes=("circle", "blob"))
    with pytest.raises(ValueError, match="min_objects"):
        generate_shapes(tmp_path, num_train=1, num_val=0, num_test=0, min_objects=3, max_objects=2)


def test_quick_preset_is_small():
    quick = PRESETS["quick"]
    assert quick["num_train"] + quick["num_val"] + quick["num_test"] <= 200


def test_loads_with_the_project_reader(shapes):
    from visiondoctor.data.formats import load_detection

    coco = _coco(shapes, "val")
    index = load_detection(shapes, split="val")
    assert len(index.records) == len(coco["images"])
    assert index.num_boxes == len(coco["annotations"])
    assert [c.name for c in index.categories] == list(DEFAULT_CLASSES)
    assert not [p for p in index.problems if p.action == "refused"]
