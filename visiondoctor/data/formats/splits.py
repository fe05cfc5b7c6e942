"""Split names as datasets spell them: train / training, val / valid / validation and test / testing
stand for one another, so a config saying `val` reads a Roboflow export's `valid/` folder and
`train` reads ADE20K's `training/`."""
from __future__ import annotations

from pathlib import Path

from visiondoctor.data.samples import DataError

SPLIT_ALIASES = ({"train", "training"}, {"val", "valid", "validation"}, {"test", "testing"})


def match_split(split: str, available: list[str]) -> str | None:
    """`split` as it is named in `available` (val/valid/validation are aliases), or None."""
    if split in available:
        return split
    for group in SPLIT_ALIASES:
        if split in group:
            for name in available:
                if name in group:
                    return name
    return None


def pick_split(path: Path, split: str | None, available: list[str], required: bool = True) -> str | None:
    """The split to read: `split` resolved against `available`; the only one when split is None."""
    if split is None:
        if len(available) == 1:
            return available[0]
        if not available and not required:
            return None
        raise DataError(f"{path}: holds splits {available}; choose one (split=...)" if available
                        else f"{path}: no splits found")
    name = match_split(split, available)
    if name is None:
        if not available and not required:
            raise DataError(f"{path}: split {split!r} asked for, but this dataset has no splits")
        raise DataError(f"{path}: no split {split!r}; available: {available}")
    return name


def subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def read_split_list(list_file: Path, available: list[str]) -> list[tuple[int, str]]:
    """(line number, first word) of each non-empty line of a split list (VOC's ImageSets/*/<split>.txt);
    DataError naming the file, and the splits that exist, when it cannot be read."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{list_file}: split list not found; available: {available}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{list_file}: cannot read split list ({exc})") from None
    return [(n, line.split()[0]) for n, line in enumerate(lines, start=1) if line.strip()]
