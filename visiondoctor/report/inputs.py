"""Tolerant readers for the files of a run directory, shared by the report sections.

Missing files read as None (the section is then skipped); unreadable ones raise
`ReportInputError` naming the file and line, which the report shows in place of the
section instead of stopping.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml

from visiondoctor.rundir import RunDir


class ReportInputError(ValueError):
    pass


def read_json(run: RunDir, name: str) -> Any | None:
    """The parsed JSON file `name` of the run directory, or None when it does not exist."""
    return read_json_file(run.path / name)


def read_json_file(path: Path) -> Any | None:
    """The parsed JSON file, or None when it does not exist; ReportInputError when unreadable."""
    if not path.exists():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{path}: cannot read: {exc}") from None


def read_config(run: RunDir) -> dict[str, Any]:
    """config.yaml as a plain dict (not validated: the report must open old or partial runs)."""
    if not run.config.exists():
        return {}
    try:
        with open(run.config, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ReportInputError(f"{run.config}: cannot read: {exc}") from None
    return data if isinstance(data, dict) else {}


def cfg(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """config value at `a.b.c`, or default."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def read_history(run: RunDir) -> list[dict[str, Any]] | None:
    """history.csv rows with numbers parsed (empty cells become None); None when absent."""
    if not run.history.exists():
        return None
    rows = []
    try:
        with open(run.history, encoding="utf-8", newline="") as fh:
            for line_no, raw in enumerate(csv.DictReader(fh), start=2):
                if None in raw:
                    raise ReportInputError(f"{run.history}: line {line_no}: more cells than columns")
                rows.append({k.strip(): _number_or_text(v) for k, v in raw.items() if k is not None})
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportInputError(f"{run.history}: cannot read: {exc}") from None
    return rows


def _number_or_text(value: str | None) -> Any:
    if value is None or value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value.strip()


def finite(value: Any) -> float | None:
    """value as a float when it is a finite number, else None (NaN, inf, text, None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def confined(root: Path, name: str) -> Path | None:
    """root/name resolved, or None when it escapes root (a hostile or broken file name)."""
    root = root.resolve()
    path = (root / name).resolve()
    return path if path.is_relative_to(root) else None
