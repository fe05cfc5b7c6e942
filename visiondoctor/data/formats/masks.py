"""Image/mask folders: `images/` and `masks/` with matching file stems, plus `classes.txt`;
and the mask-reading machinery every segmentation layout shares (`scan_pairs`, `finish_index`,
`build_index`, `load_mask_array`).

Layout (any form)::

    root/images/a.jpg   root/masks/a.png   root/classes.txt
    root/<split>/images/...  root/<split>/masks/...  (classes.txt in root/<split> or root)
    root/images/<split>/...  root/masks/<split>/...

`classes.txt` holds one class name per line; line i (0-based, blank and `#` lines skipped)
names label i. A mask holds one label per pixel: 8-bit grey (mode L), or a palette PNG
(mode P) whose palette *indices* are the labels (its colours are only for display; this
is how VOC-style masks store labels). A 16-bit mask is accepted when its values fit. RGB colour
masks are refused: colours are not labels, and guessing a colour table would be wrong
silently. Every problem names the file; refused records are left out and counted.

The void value (pixels left out of the loss and the metrics) is the configured ignore index,
or, when none is given (`read(..., ignore_index=None)`), found in the masks by the rule of
`data/seg_void.py` (a value on thin borders, or far above the class count).

EXIF orientation: images are used as displayed (data/images.py), and annotation tools draw masks
on the displayed image, so a mask normally has the displayed size and is used as stored. When a
mask instead has the *stored* size of an image that EXIF turns by 90 degrees, it was drawn on the
un-rotated pixels (by a tool ignoring EXIF): it gets the image's orientation too
(`SegmentationRecord.mask_orientation`, applied by `load_record_mask`; repaired). Flips and 180
degree turns keep the size, so they cannot be told apart: the mask is taken as drawn on the
displayed image (noted once). A mask file's own EXIF is ignored: masks are label arrays written
by tools and scripts, not photos.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats.splits import subdirs
from visiondoctor.data.images import ImageHeader, apply_orientation, read_header
from visiondoctor.data.seg_samples import (
    DataError,
    Problem,
    SegmentationIndex,
    SegmentationRecord,
    identity_lut,
)
from visiondoctor.data.seg_void import infer_void

NAME = "masks"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CLASS_FILES = ("classes.txt", "class_names.txt", "labels.txt")
DEFAULT_IGNORE = 255


def read_class_names(path: Path) -> list[str]:
    """One name per line; blank lines and `#` comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the class-names file: {exc}") from None
    names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise DataError(f"{path}: the class-names file lists no class")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path}: class names appear twice: {', '.join(dup)}")
    return names


# ----- one mask ---------------------------------------------------------------------------------

def load_mask_array(path: Path, orientation: int = 1) -> tuple[np.ndarray, str]:
    """The raw per-pixel values of a label mask and its PIL mode (RGB masks raise DataError),
    turned as EXIF `orientation` says (a record's `mask_orientation`; 1 = as stored)."""
    with Image.open(path) as im:
        mode = im.mode
        im = apply_orientation(im, orientation)
        if mode in ("L", "P"):
            return np.asarray(im, dtype=np.uint8).copy(), mode
        if mode == "1":
            return np.asarray(im, dtype=np.uint8).copy(), mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im)
            if arr.size and (arr.min() < 0 or arr.max() > 255):
                raise DataError(
                    f"{path}: 16/32-bit mask with values {int(arr.min())}..{int(arr.max())}; "
                    "labels must be 0..255 (255 = ignore by default)"
                )
            return arr.astype(np.uint8), mode
        if mode in ("RGB", "RGBA", "LA"):
            arr = np.asarray(im)
            chans = arr[..., :3] if mode != "LA" else arr[..., :1]
            if mode != "LA" and (chans == chans[..., :1]).all():
                return chans[..., 0].astype(np.uint8), mode  # grey saved as RGB: repaired by caller
            if mode == "LA":
                return chans[..., 0].astype(np.uint8), mode
        raise DataError(
            f"{path}: mask has mode {mode} (colour); a mask must hold one label per pixel "
            "(8-bit grey 'L' or palette 'P' PNG). Convert colours to label indices first."
        )


def load_record_mask(record: SegmentationRecord) -> np.ndarray:
    """A record's raw mask values in the displayed image's frame (its `mask_orientation` applied)."""
    return load_mask_array(record.mask_path, record.mask_orientation)[0]


@dataclass
class MaskStats:
    """Per-value counts of one mask, sparse: the values present, their pixels, and how many of
    those touch a different value (4-neighbours; how thin the value's regions are)."""

    values: np.ndarray
    pixels: np.ndarray
    edge_pixels: np.ndarray

    @classmethod
    def of(cls, arr: np.ndarray) -> "MaskStats":
        edge = np.zeros(arr.shape, dtype=bool)
        across = arr[:, 1:] != arr[:, :-1]
        edge[:, 1:] |= across
        edge[:, :-1] |= across
        down = arr[1:] != arr[:-1]
        edge[1:] |= down
        edge[:-1] |= down
        pixels = np.bincount(arr.ravel(), minlength=256)
        edges = np.bincount(arr[edge], minlength=256)
        values = np.flatnonzero(pixels)
        return cls(values, pixels[values], edges[values])


@dataclass
class MaskInspection:
    """What reading one mask found: problems, its counts (None when unusable), the orientation to load it with."""

    problems: list[Problem]
    stats: MaskStats | None
    orientation: int = 1
    palette: bool = False  # a palette (mode P) PNG: its indices were read as labels


def inspect_mask(mask_path: Path, header: ImageHeader, record: str) -> MaskInspection:
    """Read one mask: unreadable, colour, or a size that is neither the image's displayed size nor
    (for an image EXIF turns by 90 degrees) its stored size makes it unusable. Values are judged
    later, against the classes and the void value (`finish_index`)."""
    name = str(mask_path)
    try:
        arr, mode = load_mask_array(mask_path)
    except DataError as exc:
        return MaskInspection([Problem(name, record, str(exc).split(": ", 1)[-1], "refused", "colour_mask")], None)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        return MaskInspection([Problem(name, record, f"unreadable mask: {exc}", "refused", "unreadable_mask")], None)
    problems: list[Problem] = []
    if mode in ("RGB", "RGBA"):
        problems.append(Problem(name, record, f"grey mask stored as {mode}; first channel used", "repaired", "mask_mode"))
    elif mode == "LA":
        problems.append(Problem(name, record, "grey+alpha mask; alpha dropped", "repaired", "mask_mode"))
    h, w = arr.shape[:2]
    (width, height), orientation = header.size, 1
    if (w, h) != (width, height) and header.size != header.stored_size and (w, h) == header.stored_size:
        orientation = header.orientation
        problems.append(Problem(
            name, record,
            f"mask is {w}x{h}, the image's stored size; the image has EXIF orientation {header.orientation} "
            f"(displayed {width}x{height}): the mask was drawn on the un-rotated pixels and is turned the same way",
            "repaired", "mask_orientation",
        ))
    elif (w, h) != (width, height):
        exif = (f" (stored {header.stored_width}x{header.stored_height}, EXIF orientation {header.orientation})"
                if header.orientation != 1 else "")
        problems.append(Problem(
            name, record,
            f"mask is {w}x{h} but its image is {width}x{height}{exif} (width x height)",
            "refused", "mask_size",
        ))
        return MaskInspection(problems, None)
    return MaskInspection(problems, MaskStats.of(arr), orientation, mode == "P")


# ----- many masks -------------------------------------------------------------------------------

@dataclass
class MaskScan:
    """Every (image, mask) pair read once: the readable ones with their counts, and the problems."""

    root: Path
    source: Path
    total: int  # images found, usable or not
    found: list[tuple[SegmentationRecord, MaskStats | None]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    palette: int = 0

    def _dense(self, part: str) -> np.ndarray:
        out = np.zeros(256, dtype=np.int64)
        for _, stats in self.found:
            if stats is not None:
                np.add.at(out, stats.values, getattr(stats, part))
        return out

    def value_pixels(self) -> np.ndarray:
        """Raw value -> pixels over every readable mask (256 entries)."""
        return self._dense("pixels")

    def edge_pixels(self) -> np.ndarray:
        """Raw value -> pixels touching another value, over every readable mask (256 entries)."""
        return self._dense("edge_pixels")


def scan_pairs(root: Path, source: Path, pairs: list[tuple[Path, Path | None]], *, check_masks: bool = True,
               missing_mask: str = "no mask with the same stem") -> MaskScan:
    """Read each (image, mask) pair's image header and mask. A mask of None gets `missing_mask`
    as its refusal; a mask path that does not exist is refused as not found."""
    scan = MaskScan(root, source, len(pairs))
    same_size_turns = 0
    for image_id, (image_path, mask_path) in enumerate(pairs):
        rel = _relative(image_path, root)
        record = f"image {rel}"
        if mask_path is None or not mask_path.is_file():
            message = missing_mask if mask_path is None else f"its mask {_relative(mask_path, root)} does not exist"
            scan.problems.append(Problem(str(image_path), record, message, "refused", "missing_mask"))
            continue
        try:
            header = read_header(image_path)
        except DataError as exc:
            scan.problems.append(Problem(str(image_path), record, f"unreadable image: {str(exc).split(': ', 1)[-1]}",
                                         "refused", "unreadable_image"))
            continue
        orientation, stats = 1, None
        if check_masks:
            inspection = inspect_mask(mask_path, header, record)
            scan.problems.extend(inspection.problems)
            if inspection.stats is None:
                continue
            stats, orientation = inspection.stats, inspection.orientation
            scan.palette += inspection.palette
        same_size_turns += header.orientation != 1 and header.size == header.stored_size
        width, height = header.size
        scan.found.append((SegmentationRecord(image_id, rel, image_path, mask_path, width, height, orientation), stats))
    if same_size_turns:
        scan.problems.append(Problem(
            str(source), f"{same_size_turns} images",
            "EXIF orientation that keeps the image's size (a flip, a 180 degree turn, or a square image): "
            "masks are taken as drawn on the displayed image", "info", "exif_orientation"))
    return scan


def finish_index(
    scan: MaskScan,
    class_names: list[str],
    valid_values: np.ndarray,
    *,
    ignore_index: int,
    value_to_label: tuple[int, ...] = (),
    anomaly_labels: tuple[int, ...] = (),
    void_values: tuple[int, ...] = (),
    void_source: str = "configured",
    void_evidence: str = "",
) -> SegmentationIndex:
    """Judge every scanned mask's values against `valid_values` (classes and void; 256 bools),
    keep the usable records, and build the index (DataError when none is usable)."""
    problems = list(scan.problems)
    records: list[SegmentationRecord] = []
    value_pixels = np.zeros(256, dtype=np.int64)
    edge_pixels = np.zeros(256, dtype=np.int64)
    outside: dict[int, int] = {}
    for record, stats in scan.found:
        if stats is not None:
            bad = ~valid_values[stats.values]
            if bad.any():
                shown = ", ".join(f"{v} ({n} px)" for v, n in zip(stats.values[bad][:8], stats.pixels[bad][:8]))
                problems.append(Problem(str(record.mask_path), f"image {record.file_name}",
                                        f"label values out of range: {shown}", "refused", "label_out_of_range"))
                for v, n in zip(stats.values[bad].tolist(), stats.pixels[bad].tolist()):
                    outside[v] = outside.get(v, 0) + n
                continue
            np.add.at(value_pixels, stats.values, stats.pixels)
            np.add.at(edge_pixels, stats.values, stats.edge_pixels)
        records.append(record)
    if scan.palette:
        problems.append(Problem(str(scan.source), f"{scan.palette} masks",
                                "palette (mode P) masks: palette indices are read as labels", "info", "palette_masks"))
    checked = any(stats is not None for _, stats in scan.found)
    index = SegmentationIndex(
        scan.root, scan.source, class_names, records, ignore_index, anomaly_labels, value_to_label, problems,
        total_files=scan.total, value_pixels=value_pixels.tolist() if checked else [],
        value_edge_pixels=edge_pixels.tolist() if checked else [], void_values=tuple(void_values),
        void_source=void_source, void_evidence=void_evidence, outside_values=dict(sorted(outside.items())),
    )
    if not records:
        raise DataError(f"{scan.source}: no usable image/mask pair ({scan.total} images found)", problems)
    return index


def build_index(
    root: Path,
    source: Path,
    pairs: list[tuple[Path, Path | None]],
    class_names: list[str],
    valid_values: np.ndarray,
    *,
    ignore_index: int,
    value_to_label: tuple[int, ...] = (),
    anomaly_labels: tuple[int, ...] = (),
    extra_problems: list[Problem] | None = None,
    check_masks: bool = True,
    void_values: tuple[int, ...] = (),
    void_source: str = "configured",
    void_evidence: str = "",
    missing_mask: str = "no mask with the same stem",
) -> SegmentationIndex:
    """Check each (image, mask) pair and keep the usable ones: `scan_pairs` then `finish_index`,
    for a format whose classes and void values are known before reading. Shared by every layout."""
    scan = scan_pairs(root, source, pairs, check_masks=check_masks, missing_mask=missing_mask)
    scan.problems[:0] = list(extra_problems or [])
    return finish_index(scan, class_names, valid_values, ignore_index=ignore_index, value_to_label=value_to_label,
                        anomaly_labels=anomaly_labels, void_values=void_values, void_source=void_source,
                        void_evidence=void_evidence)


def pair_by_stem(images_dir: Path, masks_dir: Path) -> tuple[list[tuple[Path, Path | None]], list[Problem]]:
    """Each image file of `images_dir` with the mask of the same stem in `masks_dir` (None when
    there is none); masks sharing a stem or without an image are noted (info)."""
    problems: list[Problem] = []
    masks: dict[str, Path] = {}
    for p in sorted(masks_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in masks:
                problems.append(Problem(str(p), f"stem {p.stem}", f"two masks share this stem; {masks[p.stem].name} used",
                                        "info", "duplicate_mask"))
                continue
            masks[p.stem] = p
    images = [p for p in sorted(images_dir.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    stems = {p.stem for p in images}
    for stem, p in masks.items():
        if stem not in stems:
            problems.append(Problem(str(p), f"stem {stem}", "mask without an image; not used", "info", "orphan_mask"))
    return [(p, masks.get(p.stem)) for p in images], problems


def valid_values_of(values: list[int] | range | tuple[int, ...]) -> np.ndarray:
    """The 256-entry bool table `finish_index` takes: True for each value listed."""
    valid = np.zeros(256, dtype=bool)
    valid[list(values)] = True
    return valid


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# ----- the image/mask folder layout -------------------------------------------------------------

def _find_dirs(root: Path, split: str | None) -> tuple[Path, Path, Path]:
    """(images dir, masks dir, folder to look for the class file in)."""
    candidates = []
    if split:
        candidates += [(root / split / "images", root / split / "masks", root / split),
                       (root / "images" / split, root / "masks" / split, root)]
    candidates.append((root / "images", root / "masks", root))
    for images, masks, base in candidates:
        if images.is_dir() and masks.is_dir():
            return images, masks, base
    tried = ", ".join(f"{i.relative_to(root)} + {m.relative_to(root)}" for i, m, _ in candidates)
    raise DataError(f"{root}: no image/mask folders found (tried {tried})")


def detect(root: Path) -> bool:
    """True when `root` holds `images/` + `masks/`, or `<split>/images/` + `<split>/masks/` (names only)."""
    root = Path(root)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return True
    return any((d / "images").is_dir() and (d / "masks").is_dir() for d in subdirs(root))


def list_splits(root: Path) -> list[str]:
    """Split names: `<split>/images` + `<split>/masks`, or `images/<split>` + `masks/<split>`; [] when flat."""
    root = Path(root)
    splits = {d.name for d in subdirs(root) if (d / "images").is_dir() and (d / "masks").is_dir()}
    if (root / "masks").is_dir():
        splits |= {d.name for d in subdirs(root / "images") if (root / "masks" / d.name).is_dir()}
    return sorted(splits)


def read(root: Path, split: str, ignore_index: int | None = None) -> SegmentationIndex:
    """One split (split "" or a flat folder: the whole folder); `ignore_index` None finds the void
    value in the masks (data/seg_void.py)."""
    return read_mask_folder(root, split or None, ignore_index=ignore_index)


def read_mask_folder(
    root: str | Path,
    split: str | None = None,
    *,
    ignore_index: int | None = DEFAULT_IGNORE,
    classes_file: str | Path | None = None,
    check_masks: bool = True,
) -> SegmentationIndex:
    """Read an image/mask folder into a `SegmentationIndex` (see the module docstring).
    `ignore_index` None: the void value is found in the masks (needs `check_masks`)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    images_dir, masks_dir, base = _find_dirs(root, split)
    if classes_file is None:
        found = [d / n for d in (base, root) for n in CLASS_FILES if (d / n).is_file()]
        if not found:
            raise DataError(
                f"{base}: no class-names file ({' / '.join(CLASS_FILES)}); write one class name per line, "
                "line i naming label i"
            )
        classes_file = found[0]
    names = read_class_names(Path(classes_file))
    if ignore_index is not None:
        _check_ignore_index(ignore_index, names)

    pairs, problems = pair_by_stem(images_dir, masks_dir)
    scan = scan_pairs(root, images_dir, pairs, check_masks=check_masks)
    scan.problems[:0] = problems

    if ignore_index is not None:
        void, source, evidence = ignore_index, "configured", f"ignore_index {ignore_index} was given"
    elif check_masks:
        value_pixels = scan.value_pixels()
        void, evidence = infer_void(value_pixels, scan.edge_pixels(), len(names))
        source = "found in masks" if void is not None else "none"
        if void is None and value_pixels[len(names):].any():  # values no class names, none taken as void
            scan.problems.append(Problem(str(images_dir), "void value", evidence, "info", "void_value"))
    else:
        void, source, evidence = None, "none", "masks not read (check_masks off): no void value looked for"
    ignore = void if void is not None else DEFAULT_IGNORE  # without a void value, only the loss uses it
    if void is None:
        _check_ignore_index(ignore, names)
    valid = valid_values_of([*range(len(names)), *([void] if void is not None else [])])
    return finish_index(scan, names, valid, ignore_index=ignore, value_to_label=identity_lut(len(names), ignore),
                        void_values=(void,) if void is not None else (), void_source=source, void_evidence=evidence)


def _check_ignore_index(ignore_index: int, names: list[str]) -> None:
    if not 0 <= ignore_index <= 255:
        raise DataError(f"ignore index {ignore_index} must be within 0..255 (8-bit masks)")
    if ignore_index < len(names):
        raise DataError(f"ignore index {ignore_index} is also label {ignore_index} ({names[ignore_index]!r})")


def is_any_folder(root: Path) -> bool:
    """The generic layout is the fallback when no other segmentation layout is recognised (its reader
    then says which image/mask folders it looked for)."""
    return Path(root).is_dir()


register_format(DatasetFormat(name=NAME, task="segmentation", priority=90, detect=is_any_folder, read=read,
                              list_splits=list_splits, looks_for="images/ + masks/ folders (optionally per split) with classes.txt"))
