"""The one writer of diagnosis.json / diagnosis.md (atomic): a run's or a diagnose run's findings.

`write_diagnosis` replaces the file; `update_diagnosis` keeps the findings already there except
those a later stage redoes (an evaluation on another split, an early-exit calibration), so each
stage owns its own findings and none is lost."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from visiondoctor.findings import Finding, sort_findings
from visiondoctor.report.markdown import diagnosis_markdown
from visiondoctor.rundir import write_bytes_atomic, write_json_atomic

DIAGNOSIS_JSON = "diagnosis.json"
DIAGNOSIS_MD = "diagnosis.md"


def _as_dict(f: Finding | dict[str, Any]) -> dict[str, Any]:
    return f if isinstance(f, dict) else f.to_dict()


def write_diagnosis(findings: Sequence[Finding | dict[str, Any]], out_dir: Path,
                    title: str = "Diagnosis") -> tuple[Path, Path]:
    """diagnosis.json (the findings as dicts, errors first) and diagnosis.md (the same as an analysis)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dicts = sort_findings([_as_dict(f) for f in findings])
    json_path = write_json_atomic(out_dir / DIAGNOSIS_JSON, dicts)
    md_path = write_bytes_atomic(out_dir / DIAGNOSIS_MD, diagnosis_markdown(dicts, title).encode("utf-8"))
    return json_path, md_path


def read_diagnosis(out_dir: Path) -> list[dict[str, Any]]:
    """The findings in out_dir/diagnosis.json ([] when there is none); a {"findings": [...]} file is read too."""
    path = Path(out_dir) / DIAGNOSIS_JSON
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    listed = data.get("findings", []) if isinstance(data, dict) else data
    return [f for f in listed if isinstance(f, dict)]


def update_diagnosis(out_dir: Path, findings: Sequence[Finding | dict[str, Any]], redone: Callable[[str], bool],
                     title: str = "Diagnosis") -> list[dict[str, Any]]:
    """Replace the findings whose ID `redone` accepts by `findings`; keep every other one."""
    kept = [f for f in read_diagnosis(out_dir) if not redone(str(f.get("id", "")))]
    merged = sort_findings(kept + [_as_dict(f) for f in findings])
    write_diagnosis(merged, out_dir, title)
    return merged
