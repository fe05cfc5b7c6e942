"""Checkpoints that survive crashes: atomic write, a SHA-256 checksum, safe load, fallback.

Each checkpoint is `step_XXXXXXXX.pt` plus `step_XXXXXXXX.pt.sha256`. A write goes to a
temporary file and is renamed, so a kill or a full disk leaves the previous checkpoint
intact. Loading verifies the checksum and uses `weights_only=True` (nothing is unpickled);
a truncated or corrupted file is skipped, with a message, in favour of the previous one.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from visiondoctor.rundir import write_bytes_atomic

log = logging.getLogger(__name__)
_PATTERN = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` (tensors, numbers, strings, dicts, lists) for `step`; keep the newest `keep`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = Path(folder) / f"step_{step:08d}.pt"
    write_bytes_atomic(path, data)
    write_bytes_atomic(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in step order, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _PATTERN.match(p.name))


def load_checkpoint_file(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify the checksum, then load with weights_only=True. Raises CheckpointError if unusable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from exc
    checksum_file = path.with_name(path.name + ".sha256")
    if checksum_file.exists():
        expected = checksum_file.read_text().strip()
        actual = hashlib.sha256(data).hexdigest()
        if expected != actual:
            raise CheckpointError(f"{path}: checksum mismatch (file truncated or corrupted)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt archives
        raise CheckpointError(f"{path}: cannot load ({exc.__class__.__name__}: {exc})") from exc


def load_latest(folder: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies; broken ones are reported and skipped."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint_file(path, map_location)
        except CheckpointError as exc:
            log.warning("%s; falling back to the previous checkpoint", exc)
    return None
