"""How a run loads its training images: at which size (`data.reduce`), from which cache
(`data.cache`) and with how many loader workers (`data.workers`).

`data.workers: auto` follows one rule (`auto_workers`): min(4, CPUs - 1) workers when the
training images are large - a mean of at least 1 megapixel over up to 8 images spread over the
split, read from their headers - unless they are cached in memory; otherwise 0 (small images
decode in about a millisecond, and in-memory ones not at all: worker processes would cost more
than they save). The measure is the stored pixel count rather than a timing on purpose: the
worker count decides which process draws the augmentations' random numbers, so it must not
depend on how busy the machine happens to be when the run starts.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visiondoctor.config import Config, DataConfig
from visiondoctor.data.image_cache import CACHE_MODES, ReducedImages
from visiondoctor.data.images import read_header
from visiondoctor.data.samples import DataError

log = logging.getLogger(__name__)

LARGE_IMAGE_MEGAPIXELS = 1.0
MAX_AUTO_WORKERS = 4
SAMPLED_IMAGES = 8


def decode_side(reduce: int | str | bool, image_size: int, model_resizes: bool = True) -> int | None:
    """The shorter side training images are decoded at (None: full size) for `data.reduce`:
    auto = the model's input size `image_size` when the model resizes its inputs to at most that on
    either side (`model_resizes`), else full size; off; or a side in pixels (e.g. twice the input
    size, to keep more detail in the augmentation's crops)."""
    if reduce == "auto":
        return image_size if model_resizes and image_size > 0 else None
    if reduce is False or reduce in ("off", "none"):  # YAML reads a bare `off` as false
        return None
    if isinstance(reduce, int) and not isinstance(reduce, bool) and reduce > 0:
        return reduce
    raise ValueError(f"data.reduce={reduce!r}: expected auto, off or a shorter side in pixels (e.g. 640)")


def cache_folder(output_dir: str | Path) -> Path:
    """Where `data.cache=disk` keeps reduced images: shared by the runs of one output folder."""
    return Path(output_dir) / "_cache" / "images"


def training_images(cfg: Config, model_resizes: bool = True) -> ReducedImages:
    """The image loader of cfg's training and validation datasets (see `decode_side`)."""
    if cfg.data.cache not in CACHE_MODES:
        raise ValueError(f"data.cache={cfg.data.cache!r}: expected one of {', '.join(CACHE_MODES)}")
    return ReducedImages(decode_side(cfg.data.reduce, cfg.model.image_size, model_resizes), cfg.data.cache,
                         cache_folder(cfg.output_dir))


def auto_workers(mean_megapixels: float, cache: str, cpus: int) -> int:
    """`data.workers: auto` (module docstring): workers for large images not held in memory."""
    if cache == "ram" or mean_megapixels < LARGE_IMAGE_MEGAPIXELS:
        return 0
    return max(0, min(MAX_AUTO_WORKERS, cpus - 1))


def mean_megapixels(paths: Sequence[Path], samples: int = SAMPLED_IMAGES) -> float:
    """Mean stored size (megapixels) of up to `samples` images spread evenly over `paths` (headers only)."""
    if not paths:
        return 0.0
    step = max(1, len(paths) // samples)
    sizes = []
    for path in list(paths)[::step][:samples]:
        try:
            header = read_header(path)
        except DataError:
            continue  # the dataset reports unreadable images itself
        sizes.append(header.stored_width * header.stored_height / 1e6)
    return sum(sizes) / len(sizes) if sizes else 0.0


def dataset_image_paths(dataset: Any) -> list[Path]:
    """Image files of a file-backed dataset (DetectionDataset, SegmentationDataset); [] for in-memory ones."""
    records = getattr(getattr(dataset, "index", None), "records", None) or []
    return [Path(r.path) for r in records if getattr(r, "path", None)]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(data: DataConfig, dataset: Any) -> int:
    """The number of loader worker processes for `dataset` under `data.workers` (auto or a count)."""
    setting = data.workers
    if setting == "auto":
        megapixels = mean_megapixels(dataset_image_paths(dataset))
        workers = auto_workers(megapixels, data.cache, available_cpus())
        log.info("data.workers=auto: %d loader workers (images of %.2f megapixels on average, cache %s, %d CPUs)",
                 workers, megapixels, data.cache, available_cpus())
        return workers
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 0:
        return setting
    raise ValueError(f"data.workers={setting!r}: expected auto or a number of worker processes (0 = load in the "
                     "training process)")
