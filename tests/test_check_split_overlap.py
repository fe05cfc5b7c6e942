"""data.split-overlap: evaluation images that are also training images, found by content, in every run's
data checks (registered for the data stage; each task passes its splits' image files)."""
from types import SimpleNamespace

import numpy as np
from PIL import Image

from visiondoctor.doctor.checks import run_stage
from visiondoctor.tasks.segmentation import SegmentationTask


def picture(path, seed, size=(80, 60)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)).resize(size).save(path)
    return path


def splits(tmp_path, shared_in_val):
    (tmp_path / "train").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    train = [picture(tmp_path / "train" / f"{i}.png", i) for i in range(4)]
    val = []
    for i in range(3):
        if i < shared_in_val:  # a training image re-saved as a half-size JPEG under another name
            Image.open(train[i]).resize((40, 30)).save(tmp_path / "val" / f"copy{i}.jpg", quality=60)
            val.append(tmp_path / "val" / f"copy{i}.jpg")
        else:
            val.append(picture(tmp_path / "val" / f"new{i}.png", 100 + i))
    return {"train": train, "val": val}


def overlap(findings):
    return [f for f in findings if f.id == "data.split-overlap"]


def test_a_resized_copy_in_val_is_a_warning_naming_both_files(tmp_path):
    found = overlap(run_stage("data", split_images=splits(tmp_path, shared_in_val=1)))
    assert len(found) == 1 and found[0].severity == "warning"
    assert found[0].evidence["shared_per_split"] == {"val": 1} and found[0].evidence["kinds"] == {"near": 1}
    assert "0.png" in found[0].evidence["examples"][0] and "copy0.jpg" in found[0].evidence["examples"][0]


def test_a_mostly_shared_split_is_an_error_and_distinct_splits_pass(tmp_path):
    mostly = overlap(run_stage("data", split_images=splits(tmp_path / "a", shared_in_val=2)))
    assert mostly[0].severity == "error" and mostly[0].evidence["share_per_split"]["val"] > 0.5
    assert overlap(run_stage("data", split_images=splits(tmp_path / "b", shared_in_val=0))) == []


def test_every_task_passes_its_splits_to_the_check(tmp_path):
    paths = splits(tmp_path, shared_in_val=1)
    data = SimpleNamespace(split=lambda name: SimpleNamespace(records=[SimpleNamespace(path=p) for p in paths[name]])
                           if name in paths else (_ for _ in ()).throw(FileNotFoundError(name)))
    assert overlap(SegmentationTask().data_findings(data, {}))  # the base task's data stage, as every run calls it
