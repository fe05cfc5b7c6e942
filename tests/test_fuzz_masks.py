"""Property-based fuzzing of the image/mask folder reader (hypothesis, derandomized for CI).

Generated datasets mix the three folder layouts, odd class-name files, ignore indices in and
out of range, and images and masks of every PIL mode a user might save (grey, palette, 1-bit,
16/32-bit, float TIFF, grey-as-RGB, colour, CMYK JPEG, lossy JPEG), of the image's size or
not, with values in or out of range, next to empty, corrupt and decompression-bomb files.

Property: `read_mask_folder` either returns an index whose every record is a readable image
with a mask of its size holding only class labels or the ignore index — and every image it
left out has a refused problem naming it (nothing dropped silently) — or raises DataError
with a message naming the dataset. Never any other exception. 300 generated cases.
"""
from __future__ import annotations

import itertools
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis.errors import InvalidArgument
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from visiondoctor.data.formats.masks import IMAGE_SUFFIXES, load_mask_array, read_mask_folder
from visiondoctor.data.seg_samples import DataError, SegmentationIndex

CASES = 300
STEMS = ["a", "b", "c", "d"]
# Plausible kinds repeated, so that about half the datasets read (and the index property is exercised).
MASK_KINDS = ["L", "L", "L", "P", "P", "1", "I;16", "I", "F", "RGB-grey", "RGB-colour", "RGBA", "LA", "CMYK",
              "L-jpeg", "empty", "corrupt", "bomb"]
IMAGE_KINDS = ["RGB", "RGB", "RGB", "L", "RGBA", "empty", "corrupt", "bomb"]  # bomb: a header claiming 9e8 pixels


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb for PIL when huge)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


BOMB = png_header_only(30_000, 30_000)  # 9e8 pixels: over twice PIL's MAX_IMAGE_PIXELS


def write_image(path: Path, kind: str, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("empty", "corrupt", "bomb"):
        path.write_bytes({"empty": b"", "corrupt": b"\x89PNG\r\n\x1a\n\x00\x00 not an image", "bomb": BOMB}[kind])
        return
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert("RGB" if kind == "RGBA" and path.suffix == ".jpg" else kind).save(path)


def write_mask(path: Path, kind: str, size: tuple[int, int], values: list[int], seed: int) -> Path:
    """A mask of `kind` whose pixels are drawn from `values` (clipped to what the mode can hold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("empty", "corrupt", "bomb"):
        path.write_bytes({"empty": b"", "corrupt": b"\x89PNG\r\n\x1a\n\x00\x00 not an image", "bomb": BOMB}[kind])
        return path
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.choice(np.array(values, dtype=np.int64), size=(h, w))
    if kind in ("L", "L-jpeg"):
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    elif kind == "P":
        im = Image.new("P", (w, h))
        im.putdata([int(v) for v in np.clip(arr, 0, 255).ravel()])
        im.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
    elif kind == "1":
        im = Image.fromarray(arr > 0)
    elif kind == "I;16":
        im = Image.fromarray(np.clip(arr, 0, 65535).astype(np.uint16))
    elif kind == "I":
        im = Image.fromarray(arr.astype(np.int32))
    elif kind == "F":
        im = Image.fromarray(arr.astype(np.float32))
    elif kind == "RGB-grey":
        im = Image.fromarray(np.repeat(np.clip(arr, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
    elif kind == "RGB-colour":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    elif kind in ("RGBA", "LA"):
        grey = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        im = grey.convert(kind)
    elif kind == "CMYK":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("CMYK")
    else:
        raise AssertionError(kind)
    suffix = {"F": ".tif", "I": ".tif", "CMYK": ".jpg", "L-jpeg": ".jpg"}.get(kind, path.suffix)
    path = path.with_suffix(suffix)
    im.save(path)
    return path


@st.composite
def mask_datasets(draw) -> dict:
    """A description of a dataset; `build` writes it."""
    roll = draw(st.integers(0, 9))  # 0 (where shrinking goes) = a plausible class file
    if roll < 8:
        names = draw(st.lists(st.sampled_from(["road", "car", "sky", "person", "tree", "dog"]), min_size=1, max_size=5,
                              unique=True))
        classes = ("\n".join(["# classes", *names]) + "\n").encode()
    elif roll < 9:
        classes = "\n".join(draw(st.lists(st.sampled_from(["a", "a", " ", "# x", "", "b", "ü"]), max_size=5))).encode()
    else:
        classes = draw(st.binary(max_size=20))
    images = draw(st.lists(st.tuples(
        st.sampled_from(STEMS), st.sampled_from([".png", ".jpg"]),
        st.sampled_from(IMAGE_KINDS), st.integers(1, 12), st.integers(1, 12)),
        min_size=draw(st.sampled_from([1, 1, 1, 0])), max_size=4))
    mask = st.tuples(
        st.sampled_from(MASK_KINDS),
        st.sampled_from(["same", "same", "same", "same", "other"]),  # size: the image's, or another
        st.lists(st.integers(0, 9).flatmap(  # mostly labels 0-1 and the ignore index, sometimes out of range
            lambda r: st.integers(0, 1) if r < 8 else st.just(255) if r < 9 else st.sampled_from([6, 254, 256, 1000, -1])),
            min_size=1, max_size=3))
    masks = [(stem, *draw(mask)) for stem, *_ in images if draw(st.integers(0, 5))]  # most images have a mask
    masks += [(stem, *draw(mask)) for stem in draw(st.lists(st.sampled_from(STEMS), max_size=2))]  # strays
    return {
        "layout": draw(st.sampled_from(["flat", "split/kind", "kind/split"])),
        "classes": None if draw(st.integers(0, 19)) == 19 else classes,
        "ignore_index": draw(st.integers(0, 4).flatmap(lambda r: st.just(255) if r else st.integers(-2, 300))),
        "images": images,
        "masks": masks,
        "seed": draw(st.integers(0, 2**16)),
    }


def folder_of(root: Path, layout: str, kind: str) -> Path:
    return {"flat": root / kind, "split/kind": root / "train" / kind, "kind/split": root / kind / "train"}[layout]


def build(root: Path, spec: dict) -> tuple[Path, str | None]:
    """Write the dataset; return (root, split to ask for)."""
    split = None if spec["layout"] == "flat" else "train"

    def folder(kind: str) -> Path:
        return folder_of(root, spec["layout"], kind)
    folder("images").mkdir(parents=True)
    folder("masks").mkdir(parents=True)
    if spec["classes"] is not None:
        (root / "classes.txt").write_bytes(spec["classes"])
    sizes = {}
    for n, (stem, suffix, kind, w, h) in enumerate(spec["images"]):
        write_image(folder("images") / f"{stem}{suffix}", kind, (w, h), spec["seed"] + n)
        sizes[stem] = (w, h)
    for n, (stem, kind, size, values) in enumerate(spec["masks"]):
        w, h = sizes.get(stem, (5, 4))
        if size == "other":
            w, h = w + 1, max(1, h - 1)
        write_mask(folder("masks") / f"{stem}.png", kind, (w, h), values, spec["seed"] + 100 + n)
    return root, split


def assert_valid_index(index: SegmentationIndex, root: Path, image_dir_files: list[Path]) -> None:
    names = index.class_names
    assert names and len(set(names)) == len(names)
    assert 0 <= index.ignore_index <= 255 and index.ignore_index >= len(names)
    assert index.records, "an index without records must have been a DataError"
    for r in index.records:
        assert Path(r.path).is_relative_to(root) and Path(r.mask_path).is_relative_to(root)
        with Image.open(r.path) as im:
            assert im.size == (r.width, r.height) and r.width > 0 and r.height > 0
        mask, _ = load_mask_array(Path(r.mask_path))
        assert mask.shape[:2] == (r.height, r.width)
        values = np.unique(mask)
        assert all(v < len(names) or v == index.ignore_index for v in values.tolist()), values
    for p in index.problems:
        assert p.file and p.record and p.message and p.action in ("repaired", "refused", "info")
    # nothing dropped silently: every image left out has a refused problem naming it
    kept = {Path(r.path).resolve() for r in index.records}
    assert index.total_files == len(image_dir_files)
    for image in image_dir_files:
        if image.resolve() not in kept:
            assert any(p.action == "refused" and (image.name in p.file or image.name in p.record)
                       for p in index.problems), image


def note(message: str) -> None:
    """hypothesis' event() for the statistics; a no-op when check() runs in a plain test."""
    try:
        event(message)
    except InvalidArgument:
        pass


def check(root: Path, spec: dict) -> None:
    root, split = build(root, spec)
    root = root.resolve()
    images_dir = folder_of(root, spec["layout"], "images")
    image_files = [p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    try:
        index = read_mask_folder(root, split, ignore_index=spec["ignore_index"])
    except DataError as error:
        message = str(error)
        # a dataset problem names the dataset; a bad ignore_index argument names the argument
        assert message.strip() and (str(root) in message or "ignore index" in message), message
        for p in error.problems:
            assert p.file and p.record and p.message and p.action in ("repaired", "refused", "info")
        note("DataError: " + re.sub(r"[0-9]+|'[^']*'", "N", message.replace(str(root), "<root>"))[:45])
        return
    assert_valid_index(index, root, image_files)
    note("index" + (" (some images refused)" if len(index.records) < index.total_files else ""))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_masks")


_counter = itertools.count()


@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(spec=mask_datasets())
def test_fuzz_mask_folders(workdir, spec):
    root = workdir / f"case{next(_counter)}"
    try:
        check(root, spec)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_generator_reaches_both_outcomes(tmp_path):
    """Guards the fuzz against generating only rejections: a plausible dataset reads, with repairs."""
    spec = {"layout": "split/kind", "classes": b"road\ncar\n", "ignore_index": 255, "seed": 0,
            "images": [("a", ".png", "RGB", 8, 6), ("b", ".jpg", "L", 5, 5), ("c", ".png", "corrupt", 3, 3)],
            "masks": [("a", "RGB-grey", "same", [0, 1, 255]), ("b", "P", "same", [1]), ("c", "L", "same", [0])]}
    root, split = build(tmp_path / "ds", spec)
    index = read_mask_folder(root, split)
    assert [r.image_id for r in index.records] == [0, 1]  # a and b; c refused
    assert {p.action for p in index.problems} >= {"repaired", "refused"}


@pytest.mark.parametrize("where", ["image", "mask"])
def test_decompression_bomb_is_a_refused_record(tmp_path, where):
    spec = {"layout": "flat", "classes": b"road\ncar\n", "ignore_index": 255, "seed": 0,
            "images": [("a", ".png", "RGB", 8, 6), ("b", ".png", "bomb" if where == "image" else "RGB", 5, 5)],
            "masks": [("a", "L", "same", [0, 1]), ("b", "bomb" if where == "mask" else "L", "same", [1])]}
    check(tmp_path / "ds", spec)
