"""The run directory: everything a run produces, at fixed paths.

Any later command (eval, report, compare, diagnose, anomaly, export) reads a run
directory; nothing depends on process state.

Runs never mix: a new run whose folder exists gets `name-2`, `name-3`, ... (`unused_run_dir`)
unless it resumes or is told the folder may be reused. Evaluation files are named by split
(`split_file`): those of the validation split — the split training evaluates on — keep the plain
names (metrics.json, predictions.json, gt.json, ...), any other split's carry it before the
extension (metrics_test.json, predictions_test.json, gt_test.json, ...).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


VAL_SPLIT = "val"  # the split whose evaluation files keep the plain names


def split_file(name: str, split: str) -> str:
    """The file name an evaluation of `split` writes for `name`: `name` for the validation split,
    `<stem>_<split><suffix>` for any other (metrics.json -> metrics_test.json)."""
    if split == VAL_SPLIT:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}_{split}{dot}{suffix}"


def unused_run_dir(path: str | Path) -> Path:
    """`path` when no such file or folder exists, else the first free `path-2`, `path-3`, ... (as Ultralytics
    numbers its runs), so a new run never writes into an older one."""
    path = Path(path)
    if not path.exists():
        return path
    n = 2
    while path.with_name(f"{path.name}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}-{n}")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def create(cls, path: str | Path) -> "RunDir":
        run = cls(Path(path))
        for sub in (run.path, run.checkpoints, run.plots):
            sub.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(Path(path))
        if not run.config.exists():
            raise FileNotFoundError(f"{run.path} is not a visiondoctor run directory (no config.yaml)")
        return run

    config = property(lambda self: self.path / "config.yaml")
    history = property(lambda self: self.path / "history.csv")
    metrics = property(lambda self: self.path / "metrics.json")
    predictions = property(lambda self: self.path / "predictions.json")
    categories = property(lambda self: self.path / "categories.json")
    diagnosis_json = property(lambda self: self.path / "diagnosis.json")
    diagnosis_md = property(lambda self: self.path / "diagnosis.md")
    report = property(lambda self: self.path / "report.html")
    checkpoints = property(lambda self: self.path / "checkpoints")
    plots = property(lambda self: self.path / "plots")
    log = property(lambda self: self.path / "train.log")
    priors = property(lambda self: self.path / "priors.json")  # the priors' fit (models.anchor_fit.fit_model_priors)
    weights = property(lambda self: self.path / "weights.json")  # which weights the run started from

    def split_path(self, name: str, split: str) -> Path:
        """Where an evaluation of `split` writes `name` (see split_file)."""
        return self.path / split_file(name, split)

    def read_json(self, name: str) -> Any:
        with open(self.path / name, encoding="utf-8") as fh:
            return json.load(fh)

    def write_json(self, name: str, obj: Any) -> Path:
        return write_json_atomic(self.path / name, obj)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename: a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files owner-only; run files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, obj: Any) -> Path:
    return write_bytes_atomic(Path(path), json.dumps(obj, indent=2, default=_json_default).encode("utf-8"))


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
