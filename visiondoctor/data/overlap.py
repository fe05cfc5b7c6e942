"""Images shared between splits: the same file, the same bytes, or the same picture re-encoded or resized.

An evaluation image that is also a training image (or a re-saved, resized copy of one, as
dataset tools and augmenting exports make) measures memory, not generalisation. `find_shared_images`
reports every such pair across splits, with both paths and split names:

- "same file": one path listed in two splits;
- "exact": identical bytes (BLAKE2b digest of the file);
- "near": the same picture after re-encoding or resizing: the 64-bit difference hashes (below)
  differ in at most `max_distance` bits *and* the thumbnails agree: the 16x16 greyscale ones
  on average within `max_mean_difference` levels (0..255) and, but for 1 % of their values,
  within `LOCAL_DIFFERENCE`; the 4x4 colour ones on average within `COLOUR_DIFFERENCE`. The
  thumbnails keep apart flat or faint images, whose hashes coincide while their content
  differs: a different small object changes a few grey cells a lot (where a re-encoding changes
  all a little), and two backgrounds of one brightness (orange and blue) are one grey but not
  one colour. Colour is compared coarsely because JPEG keeps colour at half resolution: a
  re-encoded copy's colour is blurred, its average over a quarter of the picture is not.
  Measured on 40 shapes images and 40 BCCD photos re-encoded at JPEG quality 30, halved or
  quartered, and small random-colour pictures halved at quality 60: grey mean up to 4.1, grey
  99th percentile up to 27, colour mean up to 3.6; on the 17 pairs of different synthetic
  shapes images whose hashes are within 6 bits, none passes all three (those within the grey
  mean: colour means 9.5, 14.9, 18.8).

The difference hash (dHash, Krawetz) is the sign of each horizontal brightness step in a 9x8
greyscale thumbnail of the displayed image (EXIF orientation applied): re-encoding and resizing
leave it nearly unchanged (0-3 bits on the BCCD photos at JPEG quality 30 or half size), while
different photos of one kind differ in ~30 of 64 bits. It is written here (a few lines of PIL and
numpy) rather than taken from ImageHash, which would add PyWavelets as a dependency for hashes we
do not use; and the bits are needed as integers for the bucketing below anyway.

Cost, for N images:
- each file is read once and decoded once, JPEGs at reduced scale (PIL's draft mode), on a few
  threads (PIL releases the GIL while decoding): this dominates, O(N) decodes;
- exact duplicates: digests bucketed in a dict, O(N);
- near duplicates: multi-index hashing. The 64 bits are cut into `max_distance + 1` bands; two
  hashes within `max_distance` bits agree exactly on at least one band (pigeonhole), so only
  images sharing a band value are compared. O(N * bands) to bucket plus the candidate pairs,
  which for hashes as spread as photos' is a small fraction of N^2; a dataset of near-identical
  images still costs O(N^2) comparisons (and then has that many pairs to report).
"""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from visiondoctor.data.images import apply_orientation, exif_orientation, to_rgb

HASH_BITS = 64
MAX_DISTANCE = 6  # bits of 64
MAX_MEAN_DIFFERENCE = 10.0  # grey levels (0..255), mean over the 16x16 greyscale thumbnail
LOCAL_DIFFERENCE = 40.0  # grey levels; at most 1 % of that thumbnail's values may differ by more
COLOUR_DIFFERENCE = 6.0  # levels, mean over the 4x4 colour thumbnail's values
_COLOUR_THUMB = 4
_THUMB = 16
_WORKERS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class SharedImage:
    """One image found in two splits."""

    kind: str  # "same file" | "exact" | "near"
    split_a: str
    path_a: Path
    split_b: str
    path_b: Path
    distance: int = 0  # differing hash bits (near duplicates); 0 otherwise

    def __str__(self) -> str:
        how = f"near duplicate ({self.distance} of {HASH_BITS} hash bits differ)" if self.kind == "near" else \
            "the same file" if self.kind == "same file" else "identical bytes"
        return f"{self.split_a}: {self.path_a} <-> {self.split_b}: {self.path_b}: {how}"


@dataclass
class Fingerprint:
    """What one image file is compared by; None where the file could not be read or decoded."""

    digest: bytes | None
    dhash: int | None = None
    thumb: np.ndarray | None = None  # 16x16 greyscale
    colour: np.ndarray | None = None  # 4x4 RGB


def fingerprint(path: Path, near: bool = True) -> Fingerprint:
    """Digest of the bytes and (with `near`) the difference hash and thumbnail, from one read."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return Fingerprint(None)
    digest = hashlib.blake2b(data, digest_size=16).digest()
    if not near:
        return Fingerprint(digest)
    try:
        with Image.open(io.BytesIO(data)) as im:
            orientation = exif_orientation(im)
            im.draft("RGB", (4 * _THUMB, 4 * _THUMB))  # JPEG: decode at 1/2..1/8 scale; no-op for other formats
            rgb = apply_orientation(to_rgb(im), orientation)
            grey = rgb.convert("L")
    except Exception:  # noqa: BLE001 - an undecodable image has no picture to compare; its reader reports it
        return Fingerprint(digest)
    small = np.asarray(grey.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    dhash = int.from_bytes(np.packbits(bits).tobytes(), "big")
    thumb = np.asarray(grey.resize((_THUMB, _THUMB), Image.Resampling.BOX), dtype=np.int16)
    colour = np.asarray(rgb.resize((_COLOUR_THUMB, _COLOUR_THUMB), Image.Resampling.BOX), dtype=np.int16)
    return Fingerprint(digest, dhash, thumb, colour)


def find_shared_images(
    splits: Mapping[str, Sequence[Path]],
    *,
    near: bool = True,
    max_distance: int = MAX_DISTANCE,
    max_mean_difference: float = MAX_MEAN_DIFFERENCE,
) -> list[SharedImage]:
    """Every pair of images in two different splits that are the same file, the same bytes, or
    (with `near`) the same picture re-encoded or resized. Pairs are ordered as the splits are
    (split_a comes first in `splits`); unreadable files are skipped (their readers report them)."""
    if not 0 <= max_distance < HASH_BITS // 2:
        raise ValueError(f"max_distance must be in 0..{HASH_BITS // 2 - 1} bits, got {max_distance}")
    order = {name: i for i, name in enumerate(splits)}
    entries = [(name, Path(p)) for name, paths in splits.items() for p in paths]
    unique = sorted({os.path.abspath(p) for _, p in entries})
    with ThreadPoolExecutor(_WORKERS) as pool:
        prints = dict(zip(unique, pool.map(lambda p: fingerprint(Path(p), near), unique)))
    keys = [os.path.abspath(p) for _, p in entries]

    found: dict[tuple[int, int], SharedImage] = {}

    def add(i: int, j: int, kind: str, distance: int = 0) -> None:
        if order[entries[i][0]] > order[entries[j][0]]:
            i, j = j, i
        if entries[i][0] != entries[j][0] and (i, j) not in found:
            found[(i, j)] = SharedImage(kind, entries[i][0], entries[i][1], entries[j][0], entries[j][1], distance)

    by_digest: dict[bytes, list[int]] = {}
    for i, key in enumerate(keys):
        if prints[key].digest is not None:
            by_digest.setdefault(prints[key].digest, []).append(i)
    for group in by_digest.values():
        for i, j in combinations(group, 2):
            add(i, j, "same file" if keys[i] == keys[j] else "exact")
    if near:
        hashed = [i for i, key in enumerate(keys) if prints[key].dhash is not None]
        candidates = _near_candidates(hashed, [prints[keys[i]].dhash for i in hashed],
                                      [entries[i][0] for i in hashed], max_distance)
        for i, j in sorted(candidates):
            if keys[i] == keys[j]:
                continue
            a, b = prints[keys[i]], prints[keys[j]]
            distance = (a.dhash ^ b.dhash).bit_count()
            if distance <= max_distance and _same_thumbnails(a, b, max_mean_difference):
                add(i, j, "near", distance)
    kind_order = {"same file": 0, "exact": 1, "near": 2}
    return sorted(found.values(), key=lambda s: (kind_order[s.kind], order[s.split_a], str(s.path_a),
                                                 order[s.split_b], str(s.path_b)))


def _same_thumbnails(a: Fingerprint, b: Fingerprint, max_mean_difference: float) -> bool:
    """Whether two images' thumbnails show the same picture: grey close on average and nowhere far
    apart but for 1 % of the values, colour close on average (margins in the module docstring)."""
    grey = np.abs(a.thumb - b.thumb)
    return float(grey.mean()) <= max_mean_difference and float(np.percentile(grey, 99)) <= LOCAL_DIFFERENCE \
        and float(np.abs(a.colour - b.colour).mean()) <= COLOUR_DIFFERENCE


def _near_candidates(ids: list[int], hashes: list[int], split_of: list[str], max_distance: int) -> set[tuple[int, int]]:
    """Pairs (i < j) of `ids` from different splits whose hashes agree on at least one of
    `max_distance + 1` bands (every pair within `max_distance` bits is among them)."""
    bands = max_distance + 1
    edges = [round(k * HASH_BITS / bands) for k in range(bands + 1)]
    pairs: set[tuple[int, int]] = set()
    for lo, hi in zip(edges, edges[1:]):
        mask = (1 << (hi - lo)) - 1
        buckets: dict[int, list[tuple[int, str]]] = {}
        for i, h, split in zip(ids, hashes, split_of):
            buckets.setdefault((h >> lo) & mask, []).append((i, split))
        for group in buckets.values():
            if len(group) > 1 and len({split for _, split in group}) > 1:
                pairs.update((a, b) for (a, sa), (b, sb) in combinations(group, 2) if sa != sb)
    return pairs
