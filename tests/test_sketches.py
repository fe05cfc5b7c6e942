"""The sketches generator: deterministic files, every class drawn, tight boxes, the phase split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiondoctor.data.formats import load_detection
from visiondoctor.data.synth import generate
from visiondoctor.data.synth.sketches import PHASES_FILE, SKETCH_CLASSES, generate_sketches

SMALL = dict(classes=SKETCH_CLASSES[:20], phase_sizes=(8, 4, 4, 4), instances_per_class=(5, 3, 3, 3),
             num_val=5, num_test=5)


@pytest.fixture(scope="module")
def sketches(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sketches")
    generate_sketches(out, seed=7, **SMALL)
    return out


def _coco(root: Path, split: str = "train") -> dict:
    return json.loads((root / split / "_annotations.coco.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path, sketches):
    generate_sketches(tmp_path / "again", seed=7, **SMALL)
    assert _files(tmp_path / "again") == _files(sketches)
    generate_sketches(tmp_path / "other", seed=8, **SMALL)
    assert _files(tmp_path / "other")["train/train_00000.png"] != _files(sketches)["train/train_00000.png"]


def test_at_least_twenty_classes_and_every_drawing_renders(tmp_path):
    assert len(SKETCH_CLASSES) >= 20
    generate_sketches(tmp_path, seed=1, phase_sizes=(len(SKETCH_CLASSES),), instances_per_class=(1,),
                      num_val=0, num_test=0)
    coco = _coco(tmp_path)
    assert [c["name"] for c in coco["categories"]] == list(SKETCH_CLASSES)
    assert sorted({a["category_id"] for a in coco["annotations"]}) == list(range(1, len(SKETCH_CLASSES) + 1))


def test_readable_by_the_project_reader_with_tight_boxes(sketches):
    index = load_detection(sketches, "auto", "train")
    assert not [p for p in index.problems if p.action != "info"]
    assert len(index.categories) == 20
    for record in index.records[:12]:
        ink = np.asarray(Image.open(record.path).convert("L")) < 200
        assert record.width == record.height == 128
        for x0, y0, x1, y1 in record.boxes:
            x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
            # The object's own ink touches all four sides of its box (nothing erases ink).
            assert ink[y0, x0:x1].any() and ink[y1 - 1, x0:x1].any(), record.image_id
            assert ink[y0:y1, x0].any() and ink[y0:y1, x1 - 1].any(), record.image_id


def test_phase_split_is_a_partition_with_pure_phase_images_and_exact_counts(sketches):
    phases = json.loads((sketches / PHASES_FILE).read_text())["phases"]
    assert [len(p["category_ids"]) for p in phases] == [8, 4, 4, 4]
    ids = [c for p in phases for c in p["category_ids"]]
    assert sorted(ids) == list(range(1, 21))
    coco = _coco(sketches)
    classes_of: dict[int, set[int]] = {}
    for a in coco["annotations"]:
        classes_of.setdefault(a["image_id"], set()).add(a["category_id"])
    all_train = [i for p in phases for i in p["train_image_ids"]]
    assert sorted(all_train) == sorted(im["id"] for im in coco["images"])  # every image in exactly one phase
    for p, expected in zip(phases, SMALL["instances_per_class"]):
        for image_id in p["train_image_ids"]:
            assert classes_of[image_id] <= set(p["category_ids"])
        assert set(p["instances_per_class"].values()) == {expected}
        assert p["images_per_class"] == p["instances_per_class"]  # classes are distinct within an image
    val_classes = {a["category_id"] for a in _coco(sketches, "val")["annotations"]}
    assert len(val_classes) > 8  # validation mixes the phases


def test_dispatcher_num_images_rescales_the_plan(tmp_path):
    generate("sketches", tmp_path, num_images=30, seed=0, classes=SKETCH_CLASSES[:20],
             phase_sizes=(8, 4, 4, 4), instances_per_class=(40, 16, 16, 16), num_val=2, num_test=0)
    n = len(_coco(tmp_path)["images"])
    assert 20 <= n <= 45
    with pytest.raises(ValueError, match="phase_sizes"):
        generate_sketches(tmp_path / "bad", phase_sizes=(3, 3))
