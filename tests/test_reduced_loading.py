"""Training images decoded near the model's input size: sizes, pixels, boxes that stay on their
objects through the augmentation, and an evaluation that still scores in the files' frame."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from torch import nn
from torchvision.transforms.v2.functional import resize

from visiondoctor.config import Config, config_from_dict
from visiondoctor.data.dataset import DetectionDataset
from visiondoctor.data.detection import load_detection_data
from visiondoctor.data.formats.coco import read_coco
from visiondoctor.data.image_cache import ReducedImages
from visiondoctor.data.images import load_rgb, load_rgb_reduced, reduced_size
from visiondoctor.data.loading import decode_side
from visiondoctor.data.samples import CategoryMap
from visiondoctor.data.transforms import detection_transforms
from visiondoctor.tasks.detection import DetectionTask

GREY = (128, 128, 128)
# Pure-colour blocks on grey: class = the channel that is high (red 1, green 2, blue 3).
COLOURS = {1: (230, 20, 20), 2: (20, 230, 20), 3: (20, 20, 230)}


def blocks_image(path: Path, size: tuple[int, int], blocks: list[tuple[int, tuple[int, int, int, int]]],
                 quality: int = 92) -> Path:
    """A grey image with coloured blocks (category id, xyxy box); JPEG unless the suffix says otherwise."""
    width, height = size
    pixels = np.full((height, width, 3), GREY, np.uint8)
    for category, (x1, y1, x2, y2) in blocks:
        pixels[y1:y2, x1:x2] = COLOURS[category]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **({"quality": quality} if path.suffix == ".jpg" else {}))
    return path


def write_split(folder: Path, images: list[tuple[str, tuple[int, int], list]]) -> Path:
    """A Roboflow-style COCO split (folder/_annotations.coco.json beside the images)."""
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": c, "name": n} for c, n in ((1, "red"), (2, "green"), (3, "blue"))]}
    for image_id, (name, size, blocks) in enumerate(images, start=1):
        blocks_image(folder / name, size, blocks)
        coco["images"].append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        for category, (x1, y1, x2, y2) in blocks:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                        "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    (folder / "_annotations.coco.json").write_text(json.dumps(coco))
    return folder / "_annotations.coco.json"


LARGE_IMAGES = [
    ("a.jpg", (1600, 1000), [(1, (100, 120, 400, 380)), (2, (900, 500, 1300, 900))]),
    ("b.jpg", (1200, 1800), [(3, (200, 300, 700, 800)), (1, (600, 1200, 1100, 1700))]),
    ("c.jpg", (1500, 1500), [(2, (50, 50, 350, 300)), (3, (800, 900, 1400, 1400))]),
]


def saturation(image: torch.Tensor) -> torch.Tensor:
    """max - min over the channels (0 on grey, whatever the brightness or channel order)."""
    image = image.float()
    return image.max(dim=0).values - image.min(dim=0).values


# ----- decoding at reduced size -------------------------------------------------------------------

def test_reduced_size_keeps_aspect_and_never_enlarges():
    assert reduced_size((2048, 1371), 320) == (478, 320)
    assert reduced_size((1371, 2048), 320) == (320, 478)
    assert reduced_size((300, 200), 320) == (300, 200)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_reduced_decode_has_the_expected_size_and_the_same_picture(tmp_path, suffix):
    path = blocks_image(tmp_path / f"big{suffix}", (1600, 1000), [(1, (100, 120, 400, 380))])
    image, original = load_rgb_reduced(path, 200)
    assert original == (1600, 1000)
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 200, 320)
    # The same picture as decoding everything and resizing (the JPEG draft decode differs only in the last bits).
    full = resize(load_rgb(path), [200, 320], antialias=True)
    assert (image.float() - full.float()).abs().mean() < 3.0


def test_small_images_are_not_enlarged(tmp_path):
    path = blocks_image(tmp_path / "small.jpg", (160, 120), [(2, (10, 10, 50, 50))])
    image, original = load_rgb_reduced(path, 320)
    assert original == (160, 120) and tuple(image.shape) == (3, 120, 160)
    assert torch.equal(image, load_rgb(path))


def test_reduced_decode_applies_exif_orientation(tmp_path):
    # Stored 1200 wide x 800 high with a red block at the top-left; orientation 6 displays it turned
    # clockwise: 800 wide x 1200 high, the block at the top-right.
    stored = np.full((800, 1200, 3), GREY, np.uint8)
    stored[0:200, 0:300] = COLOURS[1]
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", quality=92, exif=exif)
    image, original = load_rgb_reduced(tmp_path / "phone.jpg", 100)
    assert original == (800, 1200) and tuple(image.shape) == (3, 150, 100)
    assert saturation(image[:, 2:35, 78:98]).mean() > 150  # displayed x 600..800, y 0..300 -> reduced / 8
    assert saturation(image[:, 45:, :70]).mean() < 20


# ----- boxes follow the image -----------------------------------------------------------------------

def test_reduced_boxes_scale_exactly_and_cover_their_objects(tmp_path):
    index = read_coco(write_split(tmp_path / "train", LARGE_IMAGES))
    cmap = CategoryMap.from_categories(index.categories)
    full = DetectionDataset(index, cmap, detection_transforms(False))
    reduced = DetectionDataset(index, cmap, detection_transforms(False), ReducedImages(160))
    for i in range(len(index.records)):
        (big, big_target), (small, small_target) = full[i], reduced[i]
        h, w = small.shape[-2:]
        assert min(h, w) == 160
        scale = torch.tensor([w / big.shape[-1], h / big.shape[-2]] * 2)
        torch.testing.assert_close(small_target["boxes"], big_target["boxes"] * scale)
        for box in small_target["boxes"].round().int().tolist():
            x1, y1, x2, y2 = box
            assert saturation(small[:, y1 + 1:y2 - 1, x1 + 1:x2 - 1] * 255).min() > 100  # all object inside


def test_boxes_stay_on_their_objects_through_reduction_and_augmentation(tmp_path):
    index = read_coco(write_split(tmp_path / "train", LARGE_IMAGES))
    dataset = DetectionDataset(index, CategoryMap.from_categories(index.categories), detection_transforms(True),
                               ReducedImages(160))
    checked = 0
    for seed in range(12):
        torch.manual_seed(seed)
        for i in range(len(dataset)):
            image, target = dataset[i]
            sat = saturation(image * 255)
            for x1, y1, x2, y2 in target["boxes"].tolist():
                inner = sat[int(y1) + 2:int(y2) - 1, int(x1) + 2:int(x2) - 1]
                if inner.numel() < 16:
                    continue  # a sliver left by a crop
                assert (inner > 20).float().mean() > 0.95, (seed, i, (x1, y1, x2, y2))
                # the photometric distortion may halve the saturation, never bring it to grey; a band just
                # outside the box is grey (background or the zoom-out's fill), whatever the distortion
                y_out, x_out = int(y2) + 3, int(x2) + 3
                if y_out < sat.shape[0]:
                    assert (sat[y_out, int(x1) + 2:int(x2) - 1] > 20).float().mean() < 0.05
                if x_out < sat.shape[1]:
                    assert (sat[int(y1) + 2:int(y2) - 1, x_out] > 20).float().mean() < 0.05
                checked += 1
    assert checked > 40


# ----- the run's datasets and its evaluation -------------------------------------------------------

class BlockFinder(nn.Module):
    """A fixed 'detector' that boxes each colour's pixels in the image it is given (eval contract)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            high, boxes, labels = image > 0.6, [], []
            for label, channel in ((1, 0), (2, 1), (3, 2)):
                mask = high[channel] & ~high[[c for c in range(3) if c != channel]].any(0)
                ys, xs = torch.nonzero(mask, as_tuple=True)
                if len(xs):
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                    labels.append(label)
            outputs.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            "scores": torch.ones(len(labels)), "labels": torch.tensor(labels, dtype=torch.int64)})
        return outputs


def run_config(root: Path, reduce: object) -> Config:
    return config_from_dict({"data": {"path": str(root), "reduce": reduce}, "output_dir": str(root / "runs"),
                             "model": {"image_size": 160}, "train": {"batch_size": 2}})


def test_evaluation_scores_in_the_files_frame_with_and_without_reduction(tmp_path):
    for split in ("train", "valid"):
        write_split(tmp_path / split, LARGE_IMAGES)
    task, device = DetectionTask(), torch.device("cpu")
    metrics, sample_sizes = {}, {}
    for reduce in ("auto", "off"):
        cfg = run_config(tmp_path, reduce)
        data = load_detection_data(cfg)
        sets = task.datasets(cfg, data)
        sample_sizes[reduce] = tuple(sets.probe[0][0].shape[-2:])  # the un-augmented training sample
        # validation losses see reduced samples: their boxes are in the same (reduced) frame as the pixels
        image, target = sets.val[0]
        found = BlockFinder().eval()([image])[0]
        assert found["boxes"].shape == target["boxes"].shape
        assert (found["boxes"] - target["boxes"]).abs().max() <= 2.0
        metrics[reduce] = task.evaluate(BlockFinder().eval(), data, "val", cfg, device)
    assert sample_sizes == {"auto": (160, 256), "off": (1000, 1600)}
    assert metrics["auto"]["map"] == metrics["off"]["map"] > 0.9


def test_decode_side_settings():
    assert decode_side("auto", 320) == 320
    assert decode_side("auto", 320, model_resizes=False) is None  # a model that never resizes sees full images
    assert decode_side(False, 320) is None and decode_side("off", 320) is None  # YAML reads `off` as false
    assert decode_side(640, 320) == 640
    for bad in ("big", -1, 0, True):
        with pytest.raises(ValueError, match="data.reduce"):
            decode_side(bad, 320)
