"""The layout of a run directory: every file (checkpoint step numbers and timestamps folded) and, for
JSON / CSV / YAML files, their keys (nested key paths, list items folded) — to check that a change
keeps what a run writes. Two folders: prints the differences (exit 1 when there are any).

    python scripts/run_layout.py runs/demo_quick                 # the layout
    python scripts/run_layout.py before/demo_quick after/demo_quick
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml


def _keys(value: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            out.add(name)
            out |= _keys(v, name)
    elif isinstance(value, list):
        for v in value:
            out |= _keys(v, f"{prefix}[]")
    return out


def _folded(name: str) -> str:
    return re.sub(r"\d{3,}", "N", name)  # checkpoint_000123.pt -> checkpoint_N.pt


def layout(run: Path) -> set[str]:
    entries: set[str] = set()
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        rel = _folded(path.relative_to(run).as_posix())
        entries.add(rel)
        try:
            if path.suffix == ".json":
                entries |= {f"{rel}:{k}" for k in _keys(json.loads(path.read_text(encoding="utf-8")))}
            elif path.suffix in (".yaml", ".yml"):
                entries |= {f"{rel}:{k}" for k in _keys(yaml.safe_load(path.read_text(encoding="utf-8")))}
            elif path.suffix == ".csv":
                with open(path, newline="", encoding="utf-8") as fh:
                    entries |= {f"{rel}:{c}" for c in next(csv.reader(fh), [])}
        except (ValueError, yaml.YAMLError, UnicodeDecodeError):
            entries.add(f"{rel}:<unreadable>")
    return entries


def main() -> int:
    runs = [Path(a) for a in sys.argv[1:]]
    if len(runs) == 1:
        print("\n".join(sorted(layout(runs[0]))))
        return 0
    before, after = layout(runs[0]), layout(runs[1])
    for entry in sorted(before - after):
        print(f"- {entry}")
    for entry in sorted(after - before):
        print(f"+ {entry}")
    print(f"{len(before & after)} entries alike, {len(before - after)} only in {runs[0]}, {len(after - before)} only in {runs[1]}")
    return 1 if before != after else 0


if __name__ == "__main__":
    sys.exit(main())
