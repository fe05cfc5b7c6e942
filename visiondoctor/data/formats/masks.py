"""Image/mask folders: `images/` and `masks/` with matching file stems, plus `classes.txt`.

Layout (either form)::

    root/images/a.jpg   root/masks/a.png   root/classes.txt
    root/<split>/images/...  root/<split>/masks/...  (classes.txt in root/<split> or root)

`classes.txt` holds one class name per line; line i (0-based, blank and `#` lines skipped)
names label i. A mask holds one label per pixel: 8-bit grey (mode L), or a palette PNG
(mode P) whose palette *indices* are the labels (its colours are only for display; this
is how VOC-style masks store labels). A 16-bit mask is accepted when its values fit. The
ignore index (default 255) marks pixels left out of the loss and the metrics. RGB colour
masks are refused: colours are not labels, and guessing a colour table would be wrong
silently. Every problem names the file; refused records are left out and counted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from visiondoctor.data.formats import DatasetFormat, register_format
from visiondoctor.data.formats.splits import subdirs
from visiondoctor.data.seg_samples import (
    DataError,
    Problem,
    SegmentationIndex,
    SegmentationRecord,
    identity_lut,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CLASS_FILES = ("classes.txt", "class_names.txt", "labels.txt")


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


def load_mask_array(path: Path) -> tuple[np.ndarray, str]:
    """The raw per-pixel values of a label mask and its PIL mode (RGB masks raise DataError)."""
    with Image.open(path) as im:
        mode = im.mode
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


def inspect_mask(
    mask_path: Path,
    image_size: tuple[int, int],
    valid_values: np.ndarray,
    record: str,
) -> tuple[list[Problem], np.ndarray | None]:
    """Problems of one mask (unreadable, colour, size differing from the image, values out of
    range) and its per-value pixel counts (256 entries; None when unreadable or mis-sized)."""
    name = str(mask_path)
    try:
        arr, mode = load_mask_array(mask_path)
    except DataError as exc:
        return [Problem(name, record, str(exc).split(": ", 1)[-1], "refused")], None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        return [Problem(name, record, f"unreadable mask: {exc}", "refused")], None
    problems: list[Problem] = []
    if mode in ("RGB", "RGBA"):
        problems.append(Problem(name, record, f"grey mask stored as {mode}; first channel used", "repaired"))
    elif mode == "LA":
        problems.append(Problem(name, record, "grey+alpha mask; alpha dropped", "repaired"))
    h, w = arr.shape[:2]
    if (w, h) != tuple(image_size):
        problems.append(Problem(
            name, record,
            f"mask is {w}x{h} but its image is {image_size[0]}x{image_size[1]} (width x height)",
            "refused",
        ))
        return problems, None
    counts = np.bincount(arr.ravel(), minlength=256)
    bad = np.flatnonzero((counts > 0) & ~valid_values)
    if bad.size:
        shown = ", ".join(f"{v} ({counts[v]} px)" for v in bad[:8])
        problems.append(Problem(name, record, f"label values out of range: {shown}", "refused"))
    return problems, counts


def _image_size(path: Path, record: str) -> tuple[tuple[int, int] | None, Problem | None]:
    try:
        with Image.open(path) as im:
            return im.size, None
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        return None, Problem(str(path), record, f"unreadable image: {exc}", "refused")


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
) -> SegmentationIndex:
    """Check each (image, mask) pair and keep the usable ones. Shared by every mask format."""
    problems = list(extra_problems or [])
    records: list[SegmentationRecord] = []
    palette = 0
    value_pixels = np.zeros(256, dtype=np.int64)
    for image_id, (image_path, mask_path) in enumerate(pairs):
        rel = _relative(image_path, root)
        record = f"image {rel}"
        if mask_path is None:
            problems.append(Problem(str(image_path), record, "no mask with the same stem", "refused"))
            continue
        size, problem = _image_size(image_path, record)
        if problem:
            problems.append(problem)
            continue
        if check_masks:
            found, counts = inspect_mask(mask_path, size, valid_values, record)
            problems.extend(found)
            if any(p.action == "refused" for p in found):
                continue
            value_pixels += counts
            palette += _is_palette(mask_path)
        records.append(SegmentationRecord(image_id, rel, image_path, mask_path, size[0], size[1]))
    if palette:
        problems.append(Problem(str(source), f"{palette} masks", "palette (mode P) masks: palette indices are read as labels", "info"))
    index = SegmentationIndex(root, source, class_names, records, ignore_index, anomaly_labels,
                              value_to_label, problems, total_files=len(pairs),
                              value_pixels=value_pixels.tolist() if check_masks else [])
    if not records:
        raise DataError(f"{source}: no usable image/mask pair ({len(pairs)} images found)", problems)
    return index


def _is_palette(path: Path) -> int:
    with Image.open(path) as im:
        return int(im.mode == "P")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def read_mask_folder(
    root: str | Path,
    split: str | None = None,
    *,
    ignore_index: int = 255,
    classes_file: str | Path | None = None,
    check_masks: bool = True,
) -> SegmentationIndex:
    """Read an image/mask folder into a `SegmentationIndex` (see the module docstring)."""
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
    if not 0 <= ignore_index <= 255:
        raise DataError(f"ignore index {ignore_index} must be within 0..255 (8-bit masks)")
    if ignore_index < len(names):
        raise DataError(f"ignore index {ignore_index} is also label {ignore_index} ({names[ignore_index]!r})")

    problems: list[Problem] = []
    masks: dict[str, Path] = {}
    for p in sorted(masks_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in masks:
                problems.append(Problem(str(p), f"stem {p.stem}", f"two masks share this stem; {masks[p.stem].name} used", "info"))
                continue
            masks[p.stem] = p
    images = [p for p in sorted(images_dir.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    stems = {p.stem for p in images}
    for stem, p in masks.items():
        if stem not in stems:
            problems.append(Problem(str(p), f"stem {stem}", "mask without an image; not used", "info"))
    valid = np.zeros(256, dtype=bool)
    valid[: len(names)] = True
    valid[ignore_index] = True
    pairs = [(p, masks.get(p.stem)) for p in images]
    return build_index(
        root, images_dir, pairs, names, valid, ignore_index=ignore_index,
        value_to_label=identity_lut(len(names), ignore_index), extra_problems=problems, check_masks=check_masks,
    )


def mask_splits(root: Path) -> list[str]:
    """Splits of an image/mask folder: `<split>/images` + `<split>/masks`, or `images/<split>` + `masks/<split>`."""
    found = {d.name for d in subdirs(root) if (d / "images").is_dir() and (d / "masks").is_dir()}
    found |= {d.name for d in subdirs(root / "images") if (root / "masks" / d.name).is_dir()}
    return sorted(found)


def is_mask_folder(root: Path) -> bool:
    """Any folder: the generic layout is the fallback when no other segmentation layout is recognised
    (its reader then says which image/mask folders it looked for)."""
    return root.is_dir()


register_format(DatasetFormat(
    name="masks", task="segmentation", priority=90, detect=is_mask_folder,
    read=lambda root, split, ignore_index=255: read_mask_folder(root, split, ignore_index=ignore_index),
    list_splits=mask_splits, looks_for="images/ + masks/ folders (optionally per split) with classes.txt"))
