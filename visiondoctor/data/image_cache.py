"""Training images decoded at (about) the model's input size, once or every time (`data.cache`).

A 2048-px photo fed to a 320-px detector is mostly decoding and augmenting pixels the model
throws away. `ReducedImages` decodes each image already reduced (`load_rgb_reduced`) and, when
asked, keeps the result:

- `none`: decode every time (cheap enough once reduced; no memory, no files);
- `ram`: keep every reduced image in this process. `fill()` decodes them all up front (threads:
  PIL releases the GIL while decoding), so loader workers forked afterwards share them instead of
  each filling a copy of its own;
- `disk`: one `.npz` per image (raw uint8 pixels and the original size, read back with
  `allow_pickle=False`) in a cache folder, written atomically, so a later run or a loader worker
  skips the decoding.

An entry is keyed by the file's absolute path, byte size and modification time (ns) and by the
reduction, plus `CACHE_VERSION`: an edited or replaced file, or another input size, never hits an
old entry (a superseded `.npz` stays on disk until the folder is deleted; in memory it is replaced).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from visiondoctor.data.images import load_rgb, load_rgb_reduced
from visiondoctor.rundir import write_bytes_atomic

log = logging.getLogger(__name__)

CACHE_MODES = ("none", "ram", "disk")
CACHE_VERSION = 1  # bump when the decoding changes what a cached entry holds


class Decoded(NamedTuple):
    """A decoded image (uint8, 3 x h x w) and the (width, height) of the displayed original."""

    image: torch.Tensor
    original_size: tuple[int, int]


class ReducedImages:
    """Loads images reduced to `shorter_side` (None: full size), through the `cache` mode's store."""

    def __init__(self, shorter_side: int | None, cache: str = "none", cache_dir: Path | None = None):
        if cache not in CACHE_MODES:
            raise ValueError(f"data.cache={cache!r}: expected one of {', '.join(CACHE_MODES)}")
        if cache == "disk" and cache_dir is None:
            raise ValueError("data.cache=disk needs a cache folder")
        self.shorter_side = shorter_side
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[str, tuple[tuple[int, int, int], Decoded]] = {}

    def load(self, path: Path) -> Decoded:
        """The image of `path`, from the cache when a fresh entry is there, else decoded (and stored)."""
        if self.cache == "none":
            return self._decode(path)
        stamp = file_stamp(path)
        if self.cache == "ram":
            hit = self._memory.get(str(path))
            if hit is not None and hit[0] == stamp:
                return Decoded(hit[1].image.clone(), hit[1].original_size)  # callers may change their copy
            decoded = self._decode(path)
            self._memory[str(path)] = (stamp, decoded)
            return decoded
        entry = self.entry_path(path, stamp)
        decoded = read_entry(entry)
        if decoded is None:
            decoded = self._decode(path)
            write_entry(entry, decoded)
        return decoded

    def fill(self, paths: Iterable[Path], threads: int = 4) -> None:
        """Decode every image of `paths` into the cache now (no-op without a cache)."""
        if self.cache == "none":
            return
        paths = list(dict.fromkeys(paths))
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for _ in pool.map(self.load, paths):
                pass
        if self.cache == "ram" and self._memory:
            megabytes = sum(d.image.numel() for _, d in self._memory.values()) / 2**20
            log.info("data.cache=ram: %d images in memory (%.0f MB)", len(self._memory), megabytes)

    def entry_path(self, path: Path, stamp: tuple[int, int, int]) -> Path:
        """The disk entry of `path` as it is now (`stamp`) at this reduction."""
        assert self.cache_dir is not None
        key = f"{CACHE_VERSION}|{Path(path).resolve()}|{stamp}|{self.shorter_side}"
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:24]
        return self.cache_dir / f"{Path(path).stem[:40]}-{digest}.npz"

    def _decode(self, path: Path) -> Decoded:
        if self.shorter_side is None:
            image = load_rgb(path)
            return Decoded(image, (int(image.shape[-1]), int(image.shape[-2])))
        return Decoded(*load_rgb_reduced(path, self.shorter_side))


def file_stamp(path: Path) -> tuple[int, int, int]:
    """(inode, byte size, modification time in ns): changes when the file is edited or replaced."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def write_entry(entry: Path, decoded: Decoded) -> None:
    """Store raw pixels (h, w, 3 uint8) and the original size; atomic, so concurrent workers are safe."""
    buffer = io.BytesIO()
    np.savez(buffer, image=decoded.image.permute(1, 2, 0).numpy(),
             original_size=np.asarray(decoded.original_size, np.int64))
    try:
        write_bytes_atomic(entry, buffer.getvalue())
    except OSError as exc:  # a full or read-only disk costs speed, never the run
        log.warning("data.cache=disk: cannot write %s (%s); decoding without the cache", entry, exc)


def read_entry(entry: Path) -> Decoded | None:
    """The entry's image, or None when it is missing or unreadable (then it is decoded and rewritten)."""
    if not entry.exists():
        return None
    try:
        with np.load(entry, allow_pickle=False) as stored:
            pixels, size = stored["image"], stored["original_size"]
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or size.shape != (2,):
            raise ValueError(f"unexpected content {pixels.dtype} {pixels.shape}")
    except (OSError, ValueError, KeyError) as exc:
        log.warning("data.cache=disk: ignoring unreadable cache entry %s (%s)", entry, exc)
        return None
    return Decoded(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous(),
                   (int(size[0]), int(size[1])))
