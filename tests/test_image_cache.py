"""data.cache (ram / disk: hits, misses, invalidation, no pickles) and data.workers=auto."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny import SquaresDataset, tiny_ssd
from visiondoctor.config import TrainConfig, config_from_dict
from visiondoctor.data import image_cache, loading
from visiondoctor.data.dataset import DetectionDataset, collate_detection
from visiondoctor.data.formats.coco import read_coco
from visiondoctor.data.image_cache import ReducedImages
from visiondoctor.data.loading import auto_workers, loader_workers
from visiondoctor.data.samples import CategoryMap
from visiondoctor.data.transforms import detection_transforms
from visiondoctor.engine.trainer import Trainer


def write_picture(path: Path, size: tuple[int, int] = (900, 600), value: int = 40) -> Path:
    pixels = np.full((size[1], size[0], 3), value, np.uint8)
    pixels[100:300, 200:500] = (200, 30, 30)
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """Records every decoding the cache lets through."""
    calls: list[Path] = []
    real = image_cache.load_rgb_reduced

    def counting(path, side):
        calls.append(Path(path))
        return real(path, side)

    monkeypatch.setattr(image_cache, "load_rgb_reduced", counting)
    return calls


@pytest.mark.parametrize("mode", ["ram", "disk"])
def test_cache_hits_then_misses_when_the_file_changes(tmp_path, decodes, mode):
    path = write_picture(tmp_path / "a.jpg")
    images = ReducedImages(120, mode, tmp_path / "cache")
    first = images.load(path)
    assert tuple(first.image.shape) == (3, 120, 180) and first.original_size == (900, 600)
    second = images.load(path)
    assert len(decodes) == 1  # the second load was a hit
    assert torch.equal(first.image, second.image) and second.original_size == (900, 600)

    write_picture(path, size=(600, 900), value=220)  # replaced: other size and content
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # even where the clock is coarse
    third = images.load(path)
    assert len(decodes) == 2
    assert tuple(third.image.shape) == (3, 180, 120) and third.original_size == (600, 900)
    assert third.image.float().mean() > first.image.float().mean() + 50


def test_disk_cache_serves_another_loader_and_keys_the_size(tmp_path, decodes):
    path = write_picture(tmp_path / "a.jpg")
    ReducedImages(120, "disk", tmp_path / "cache").load(path)
    again = ReducedImages(120, "disk", tmp_path / "cache").load(path)  # e.g. a loader worker, or the next run
    assert len(decodes) == 1 and tuple(again.image.shape) == (3, 120, 180)
    bigger = ReducedImages(240, "disk", tmp_path / "cache").load(path)
    assert len(decodes) == 2 and tuple(bigger.image.shape) == (3, 240, 360)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_disk_entries_hold_raw_pixels_without_pickles(tmp_path):
    path = write_picture(tmp_path / "a.jpg")
    images = ReducedImages(120, "disk", tmp_path / "cache")
    decoded = images.load(path)
    (entry,) = (tmp_path / "cache").glob("*.npz")
    with np.load(entry, allow_pickle=False) as stored:  # would raise on an object array
        assert stored["image"].dtype == np.uint8 and stored["image"].shape == (120, 180, 3)
        assert stored["original_size"].tolist() == [900, 600]
        assert np.array_equal(stored["image"], decoded.image.permute(1, 2, 0).numpy())


def test_a_damaged_disk_entry_is_decoded_again(tmp_path, decodes, caplog):
    path = write_picture(tmp_path / "a.jpg")
    images = ReducedImages(120, "disk", tmp_path / "cache")
    first = images.load(path)
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(b"not an npz")
    again = images.load(path)
    assert len(decodes) == 2 and torch.equal(again.image, first.image)
    assert "ignoring unreadable cache entry" in caplog.text
    assert torch.equal(images.load(path).image, first.image) and len(decodes) == 2  # rewritten


def test_ram_fill_decodes_each_image_once_and_hands_out_copies(tmp_path, decodes):
    paths = [write_picture(tmp_path / f"{i}.jpg", value=30 + i) for i in range(5)]
    images = ReducedImages(60, "ram")
    images.fill(paths + paths[:2], threads=2)
    assert sorted(decodes) == sorted(paths)
    copy = images.load(paths[0]).image
    copy.zero_()  # a caller changing its sample never changes the cache
    assert images.load(paths[0]).image.float().mean() > 0 and len(decodes) == 5


def test_no_cache_decodes_every_time(tmp_path, decodes):
    path = write_picture(tmp_path / "a.jpg")
    images = ReducedImages(120)
    images.load(path), images.load(path)
    assert len(decodes) == 2 and not (tmp_path / "cache").exists()


def test_unknown_cache_mode_is_refused():
    with pytest.raises(ValueError, match="data.cache='memory'"):
        ReducedImages(120, "memory")
    cfg = config_from_dict({"data": {"cache": "memory"}})
    with pytest.raises(ValueError, match="data.cache"):
        loading.training_images(cfg)


# ----- data.workers ----------------------------------------------------------------------------------

def test_auto_workers_rule():
    assert auto_workers(2.8, "none", 16) == 4  # large images: min(4, CPUs - 1)
    assert auto_workers(2.8, "disk", 2) == 1
    assert auto_workers(2.8, "none", 1) == 0  # no spare CPU
    assert auto_workers(0.1, "none", 16) == 0  # small images decode in about a millisecond
    assert auto_workers(2.8, "ram", 16) == 0  # decoded once, then in memory


def write_split(folder: Path, size: tuple[int, int], count: int, box: list[int] | None = None) -> Path:
    """`count` pictures of `size` and their COCO file (one box each when `box` is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    for i in range(count):
        write_picture(folder / f"{i}.jpg", size, value=20 + 10 * i)
        coco["images"].append({"id": i + 1, "file_name": f"{i}.jpg", "width": size[0], "height": size[1]})
        if box:
            coco["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": box,
                                        "area": box[2] * box[3], "iscrowd": 0})
    (folder / "ann.json").write_text(json.dumps(coco))
    return folder / "ann.json"


def image_dataset(folder: Path, size: tuple[int, int], count: int = 3) -> DetectionDataset:
    index = read_coco(write_split(folder, size, count))
    return DetectionDataset(index, CategoryMap.from_categories(index.categories))


def test_loader_workers_measures_the_images(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "available_cpus", lambda: 8)
    auto = config_from_dict({"data": {"workers": "auto"}}).data
    assert loader_workers(auto, image_dataset(tmp_path / "large", (1600, 1000))) == 4
    assert loader_workers(auto, image_dataset(tmp_path / "small", (320, 240))) == 0
    assert loader_workers(auto, SquaresDataset(4)) == 0  # in memory: nothing to decode
    ram = config_from_dict({"data": {"workers": "auto", "cache": "ram"}}).data
    assert loader_workers(ram, image_dataset(tmp_path / "large", (1600, 1000))) == 0
    assert loader_workers(config_from_dict({"data": {"workers": 3}}).data, SquaresDataset(4)) == 3
    with pytest.raises(ValueError, match="data.workers='many'"):
        loader_workers(config_from_dict({"data": {"workers": "many"}}).data, SquaresDataset(4))


def test_workers_default_to_auto():
    assert config_from_dict({}).data.workers == "auto"
    assert config_from_dict({"data": {"workers": 2}}).data.workers == 2


def test_augmentation_with_workers_is_reproducible(tmp_path):
    """Two identical runs with a loader worker draw the same augmentations (the Trainer seeds the
    workers per epoch), so they end with the same weights."""
    index = read_coco(write_split(tmp_path / "data", (240, 160), 8, box=[20, 20, 80, 60]))

    def train() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        dataset = DetectionDataset(index, CategoryMap.from_categories(index.categories), detection_transforms(True),
                                   ReducedImages(64))
        cfg = TrainConfig(epochs=2, batch_size=4, lr=0.01, warmup_steps=0, device="cpu", monitors=False)
        trainer = Trainer(tiny_ssd(num_classes=2, size=64), dataset, cfg, collate_fn=collate_detection, workers=1)
        trainer.fit()
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}

    first, second = train(), train()
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, msg=name)
