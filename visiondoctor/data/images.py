"""Image files: paths confined to the dataset root, cheap size reads, robust 8-bit RGB decoding.

Every failure becomes a `DataError` naming the file (and the record that pointed at it), so a
reader can count it as a refused record and a training run never dies on a bare PIL traceback.

EXIF orientation is deliberately *not* applied, neither by `image_size` nor by `load_rgb`:
annotation tools differ on it, and the two functions must agree on the size the boxes refer to.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from visiondoctor.data.samples import DataError, Problem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


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


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header only; pixels are not decoded (fast on big datasets)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    # PIL raises many types for corrupt headers (OSError, SyntaxError, ValueError, struct.error,
    # DecompressionBombError...): all of them mean "unreadable image" here.
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read image header ({type(exc).__name__}: {exc})") from None
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: image has no pixels ({width}x{height})")
    return int(width), int(height)


def load_rgb(path: Path) -> torch.Tensor:
    """Decode any PIL-readable image to a uint8 RGB tensor (3, H, W).

    Grayscale, palette, CMYK and RGBA (alpha dropped) go through PIL's own conversion; 16-bit
    and 32-bit integer images are scaled to 8 bits (PIL's plain conversion would clip them to
    white), float images are scaled from [0, 1] when they lie in it, else clipped to [0, 255].
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgb = _to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as exc:  # noqa: BLE001 - see image_size: every PIL failure is "unreadable"
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None
    return pil_to_tensor(rgb).contiguous()


def _to_rgb(im: Image.Image) -> Image.Image:
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
