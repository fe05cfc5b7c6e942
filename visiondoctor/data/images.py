"""Image files: paths confined to the dataset root, cheap size reads, robust 8-bit RGB decoding.

Every failure becomes a `DataError` naming the file (and the record that pointed at it), so a
reader can count it as a refused record and a training run never dies on a bare PIL traceback.

EXIF orientation is applied by both `image_size` and `load_rgb`: sizes and pixels are those of
the *displayed* image (a phone photo stored 4000x3000 with orientation 6 is 3000x4000 here).
Annotation tools (CVAT, Label Studio, LabelMe, Roboflow) annotate the displayed image, so boxes
and masks refer to it; the two functions read the orientation the same way (`read_header`, from
the file header, before any pixel is decoded), so the size boxes are checked against is the size
of the decoded tensor. A reader that finds an annotation matching the *stored* size of a rotated
image says so (`rotation_hint`). Label masks are not photos: their own EXIF, if any, is ignored
(see `data/formats/masks.py`).

`load_rgb_reduced` decodes the same displayed image already reduced toward a model's input size
(JPEG draft mode), for training on photos much larger than the model sees.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import ExifTags, Image
from torchvision.transforms.v2.functional import pil_to_tensor

from visiondoctor.data.samples import DataError, Problem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

# EXIF orientation -> the transpose that turns the stored pixels into the displayed image
# (the EXIF 2.3 table; the same one PIL's ImageOps.exif_transpose uses).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (5, 6, 7, 8)  # orientations that turn the image by 90 degrees


def resolve_image_path(root: Path, file_name: str, source: str, record: str) -> Path:
    """Join `file_name` to `root`, refusing names that leave the root (`../x.jpg`, `/etc/x`).

    The check is lexical (no symlinks followed): a name written in an annotation file may not
    escape the dataset folder, while a symlink the user placed inside the folder is the user's
    own choice. Raises DataError carrying one "refused" Problem naming `source` and `record`.
    """

    def refuse(why: str) -> DataError:
        problem = Problem(source, record, f"file name {file_name!r} {why}", "refused", "path_escape")
        return DataError(f"{source}: {record}: file name {file_name!r} {why}", [problem])

    if not isinstance(file_name, str) or not file_name.strip():
        raise refuse("is empty")
    if "\x00" in file_name:
        raise refuse("contains a NUL character")
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")):
        raise refuse("is an absolute path; names must be relative to the dataset root")
    root = Path(os.path.abspath(root))
    joined = os.path.normpath(os.path.join(root, file_name))
    if os.path.commonpath([str(root), joined]) != str(root) or joined == str(root):
        raise refuse(f"escapes the dataset root {root}")
    return Path(joined)


class ImageHeader(NamedTuple):
    """What the header says: the stored size and the EXIF orientation (1 = as stored)."""

    stored_width: int
    stored_height: int
    orientation: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the displayed image: the stored size, sides swapped when turned by 90 degrees."""
        if self.orientation in _SWAPS_SIDES:
            return self.stored_height, self.stored_width
        return self.stored_width, self.stored_height

    @property
    def stored_size(self) -> tuple[int, int]:
        return self.stored_width, self.stored_height


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image, 1 when absent, invalid or unreadable.

    Never decodes pixels: PIL's PNG `getexif()` would decode the whole image to look for an eXIf
    chunk after the pixel data, so a PNG counts only the eXIf chunk met before them (where
    writers put it). A corrupt EXIF block is not worth refusing an image for: it reads as 1.
    """
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - PIL raises assorted types on corrupt EXIF
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


def apply_orientation(im: Image.Image, orientation: int) -> Image.Image:
    """`im` turned/flipped as EXIF `orientation` says (the displayed image); unchanged for 1."""
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return im.transpose(method) if method is not None else im


def read_header(path: Path) -> ImageHeader:
    """Stored size and EXIF orientation from the header only; pixels are not decoded (fast on big datasets)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = exif_orientation(im)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    # PIL raises many types for corrupt headers (OSError, SyntaxError, ValueError, struct.error,
    # DecompressionBombError...): all of them mean "unreadable image" here.
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read image header ({type(exc).__name__}: {exc})") from None
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: image has no pixels ({width}x{height})")
    return ImageHeader(int(width), int(height), orientation)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the displayed image (EXIF orientation applied), from the header only."""
    return read_header(path).size


def rotation_hint(path: Path, stated: tuple[int, int]) -> str:
    """A sentence to add to a size-mismatch message when `stated` (an annotation's width x height)
    is the *stored* size of an image that EXIF turns by 90 degrees; "" otherwise."""
    try:
        header = read_header(path)
    except DataError:
        return ""
    if header.orientation not in _SWAPS_SIDES or tuple(stated) != header.stored_size:
        return ""
    w, h = header.size
    return (f" The file is stored {header.stored_width}x{header.stored_height} with EXIF orientation "
            f"{header.orientation} (displayed {w}x{h}): the annotations were probably made on the un-rotated "
            "pixels by a tool that ignores EXIF, while boxes are read in the displayed image; rotate the image "
            "file (and drop its orientation tag) or re-export the annotations.")


def load_rgb(path: Path) -> torch.Tensor:
    """Decode any PIL-readable image to a uint8 RGB tensor (3, H, W) of the displayed image
    (EXIF orientation applied, read as `read_header` reads it, so H x W is `image_size`).

    Grayscale, palette, CMYK and RGBA (alpha dropped) go through PIL's own conversion; 16-bit
    and 32-bit integer images are scaled to 8 bits (PIL's plain conversion would clip them to
    white), float images are scaled from [0, 1] when they lie in it, else clipped to [0, 255].
    """
    return _decode(path, shorter_side=None)[0]


def load_rgb_reduced(path: Path, shorter_side: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """The displayed image (as `load_rgb` gives it) reduced so that its shorter side is
    `shorter_side` (never enlarged; aspect kept), and the displayed (width, height) before reduction.

    A model that resizes its inputs to `shorter_side` or less sees the same picture, while a large
    photo costs a fraction of the decoding: JPEGs are decoded in the DCT domain at 1/2, 1/4 or 1/8
    scale (PIL's draft mode, never below the target), then resized (antialiased) to the exact size.
    The output size is `reduced_size(original, shorter_side)`, so boxes scale by its ratio to the original.
    """
    if shorter_side < 1:
        raise ValueError(f"shorter_side must be at least 1, got {shorter_side}")
    return _decode(path, shorter_side)


def reduced_size(size: tuple[int, int], shorter_side: int) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is `shorter_side`; `size` itself when already that small."""
    width, height = size
    scale = shorter_side / min(width, height)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def _decode(path: Path, shorter_side: int | None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode to 8-bit RGB of the displayed image, reduced when `shorter_side` is given; every
    failure becomes a DataError naming the file."""
    try:
        with Image.open(path) as im:
            orientation = exif_orientation(im)  # before load(): see exif_orientation
            displayed = ImageHeader(im.size[0], im.size[1], orientation).size
            target = reduced_size(displayed, shorter_side) if shorter_side else displayed
            if target != displayed:
                # draft() asks the JPEG decoder for the smallest DCT scale still >= the target
                # (in stored orientation); other formats ignore it.
                stored_target = target[::-1] if orientation in _SWAPS_SIDES else target
                im.draft(None, stored_target)
            im.load()
            rgb = apply_orientation(to_rgb(im), orientation)
            if rgb.size != target:
                rgb = rgb.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as exc:  # noqa: BLE001 - see read_header: every PIL failure is "unreadable"
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    return pil_to_tensor(rgb).contiguous(), displayed


def to_rgb(im: Image.Image) -> Image.Image:
    """An opened image of any mode as 8-bit RGB, as `load_rgb` converts it (orientation not applied)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(im).astype(np.int64)
        eight = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        im = Image.fromarray(eight)
    elif im.mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        im = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return im.convert("RGB") if im.mode != "RGB" else im
