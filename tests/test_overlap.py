"""Images shared between splits: same file, same bytes, re-encoded or resized copies; different
pictures (including plain ones whose hashes coincide) are not reported."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from visiondoctor.data.overlap import find_shared_images, fingerprint


def photo(seed: int, size: tuple[int, int] = (120, 90)) -> Image.Image:
    """A smooth, textured picture (bicubic-upscaled random colour grid): like a photo, unlike noise."""
    grid = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture
def splits(tmp_path: Path) -> dict[str, list[Path]]:
    d = tmp_path
    for seed in range(6):
        photo(seed).save(d / f"train_{seed}.jpg", quality=95)
    (d / "val_exact.jpg").write_bytes((d / "train_0.jpg").read_bytes())  # the same bytes
    with Image.open(d / "train_1.jpg") as im:
        im.save(d / "val_reencoded.jpg", quality=40)  # the same picture, another JPEG quality
    with Image.open(d / "train_2.jpg") as im:
        im.resize((72, 54), Image.Resampling.LANCZOS).save(d / "test_resized.png")  # smaller, and PNG
    with Image.open(d / "train_3.jpg") as im:  # stored turned back, displayed upright by its EXIF tag
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = 6
        im.transpose(Image.Transpose.ROTATE_90).save(d / "test_rotated_exif.jpg", quality=90, exif=exif)
    for seed in (10, 11, 12):
        photo(seed).save(d / f"val_other_{seed}.jpg", quality=95)
    Image.new("RGB", (60, 40), (30, 30, 30)).save(d / "train_dark.png")  # plain pictures: equal hashes,
    Image.new("RGB", (60, 40), (200, 200, 200)).save(d / "val_light.png")  # different content
    train = [d / f"train_{seed}.jpg" for seed in range(6)] + [d / "train_dark.png"]
    val = [d / "val_exact.jpg", d / "val_reencoded.jpg", d / "val_light.png", d / "train_5.jpg"] + \
        [d / f"val_other_{seed}.jpg" for seed in (10, 11, 12)]
    test = [d / "test_resized.png", d / "test_rotated_exif.jpg"]
    return {"train": train, "val": val, "test": test}


def test_finds_same_file_exact_and_near_copies_only(splits) -> None:
    shared = find_shared_images(splits)
    found = {(s.kind, s.split_a, s.path_a.name, s.split_b, s.path_b.name) for s in shared}
    assert found == {
        ("same file", "train", "train_5.jpg", "val", "train_5.jpg"),
        ("exact", "train", "train_0.jpg", "val", "val_exact.jpg"),
        ("near", "train", "train_1.jpg", "val", "val_reencoded.jpg"),
        ("near", "train", "train_2.jpg", "test", "test_resized.png"),
        ("near", "train", "train_3.jpg", "test", "test_rotated_exif.jpg"),
    }
    assert [s.kind for s in shared] == ["same file", "exact", "near", "near", "near"]  # sorted by kind
    assert all(s.distance <= 6 for s in shared)
    assert "train_0.jpg" in str(shared[1]) and "identical bytes" in str(shared[1])


def test_plain_pictures_share_a_hash_but_are_not_duplicates(splits) -> None:
    dark, light = fingerprint(splits["train"][-1]), fingerprint(splits["val"][2])
    assert dark.dhash == light.dhash  # a flat picture has no brightness steps
    assert not any("light" in s.path_b.name for s in find_shared_images(splits))


def test_only_pairs_across_splits_and_exact_without_near(splits) -> None:
    same_split = {"all": [p for paths in splits.values() for p in paths]}
    assert find_shared_images(same_split) == []
    exact_only = find_shared_images(splits, near=False)
    assert {s.kind for s in exact_only} == {"same file", "exact"} and len(exact_only) == 2


def test_unreadable_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    photo(1).save(tmp_path / "ok.jpg")
    shared = find_shared_images({"train": [tmp_path / "broken.jpg", tmp_path / "missing.jpg"],
                                 "val": [tmp_path / "ok.jpg"]})
    assert shared == []
    with pytest.raises(ValueError, match="max_distance"):
        find_shared_images({}, max_distance=40)


def scene(background: tuple[int, int, int], shape_at: tuple[int, int], shape_colour: tuple[int, int, int]) -> Image.Image:
    """A plain-coloured picture with one small square on it, as synthetic detection data draws."""
    im = Image.new("RGB", (160, 160), background)
    x, y = shape_at
    im.paste(shape_colour, (x, y, x + 20, y + 20))
    return im


def test_different_colours_of_one_brightness_are_not_duplicates(tmp_path: Path) -> None:
    # Orange and blue backgrounds of nearly one grey level, a small square each in another place:
    # their greyscale hashes and thumbnails are close, the pictures are not the same.
    scene((200, 100, 0), (30, 110), (20, 160, 40)).save(tmp_path / "train_orange.jpg", quality=90)
    scene((0, 150, 250), (110, 30), (200, 60, 90)).save(tmp_path / "val_blue.jpg", quality=90)
    with Image.open(tmp_path / "train_orange.jpg") as im:
        im.resize((80, 80), Image.Resampling.LANCZOS).save(tmp_path / "val_orange_small.jpg", quality=40)
    shared = find_shared_images({"train": [tmp_path / "train_orange.jpg"],
                                 "val": [tmp_path / "val_blue.jpg", tmp_path / "val_orange_small.jpg"]})
    assert [(s.kind, s.path_b.name) for s in shared] == [("near", "val_orange_small.jpg")]
