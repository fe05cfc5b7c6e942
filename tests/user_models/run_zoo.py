"""Run the doctor on every user-written model in manifest.yaml and say, per model, whether the written-down
root cause was named, only a symptom was seen, or the fault was missed (healthy models: what was raised).

Importable (`load_manifest`, `make_data`, `run_entry`, `verdict`) and runnable from the repository root:

    OMP_NUM_THREADS=1 python tests/user_models/run_zoo.py [--steps 30] [--overfit-steps 60] [--only NAME ...]

The faults are written down in the manifest before the checks are tuned to them; this harness never changes
a model or its expected IDs to make a check pass.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

USER_MODELS = Path(__file__).resolve().parent
REPO_ROOT = USER_MODELS.parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: test this working tree's package, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))

import torch
import yaml

import visiondoctor
from visiondoctor.config import load_config
from visiondoctor.doctor.diagnose import diagnose, load_factory, load_loss
from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.zoo.common import ListDataset, masks_from_squares, squares

MANIFEST = USER_MODELS / "manifest.yaml"
RAISED = ("error", "warning")
DATA_CLASSES = 2  # squares() draws labels 1..2; num_classes passed to a model = classes + background
DIAGNOSE_RAISED = "harness.diagnose-raised"
REQUIRED = ("name", "file", "factory", "task", "healthy", "data", "fault", "cause", "symptoms", "source")


def load_manifest(path: Path = MANIFEST) -> list[dict[str, Any]]:
    """The manifest's entries, each checked for the keys the harness needs (names are unique)."""
    entries = yaml.safe_load(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of model entries")
    seen: set[str] = set()
    for i, e in enumerate(entries):
        missing = [k for k in REQUIRED if k not in e]
        if missing:
            raise ValueError(f"{path}: entry {i} ({e.get('name', e.get('file'))}) lacks {missing}")
        if e["name"] in seen:
            raise ValueError(f"{path}: entry {i}: name {e['name']!r} used twice")
        seen.add(e["name"])
        if not (USER_MODELS / e["file"]).is_file():
            raise ValueError(f"{path}: entry {e['name']}: {e['file']} not found in {USER_MODELS}")
        e.setdefault("loss", None)
        e.setdefault("num_classes", None)
        e["overrides"] = e.get("overrides") or {}
    return entries


def with_void_border(pairs: list[tuple[torch.Tensor, torch.Tensor]], width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Set a `width`-pixel frame of every mask to 255 (void), as VOC-style annotations mark unlabelled pixels."""
    if width <= 0:
        return pairs
    out = []
    for image, mask in pairs:
        mask = mask.clone()
        mask[:width], mask[-width:], mask[:, :width], mask[:, -width:] = 255, 255, 255, 255
        out.append((image, mask))
    return out


def make_data(entry: dict[str, Any]) -> tuple[ListDataset, ListDataset]:
    """(train, val) datasets for an entry: squares() for detection, masks_from_squares() for segmentation."""
    data = entry.get("data") or {}
    kind = data.get("kind", "squares")
    if kind != "squares":
        raise ValueError(f"entry {entry['name']}: unknown data kind {kind!r}")
    kw = {"size": int(data.get("size", 64)), "min_side": int(data.get("min_side", 12)), "max_side": int(data.get("max_side", 28))}
    train, val = squares(int(data.get("train", 12)), seed=0, **kw), squares(int(data.get("val", 8)), seed=1, **kw)
    if entry["task"] == "segmentation":
        border = int(data.get("void_border", 0))
        return (ListDataset(with_void_border(masks_from_squares(train), border)),
                ListDataset(with_void_border(masks_from_squares(val), border)))
    return ListDataset(train), ListDataset(val)


def run_entry(entry: dict[str, Any], steps: int = 100, overfit_steps: int = 100, out_dir: str | Path | None = None,
              on_update: Any = None) -> list[Finding]:
    """diagnose() on one entry; if diagnose itself raises, one `harness.diagnose-raised` record instead."""
    try:
        factory = load_factory(f"{USER_MODELS / entry['file']}:{entry['factory']}")
        loss_fn = load_loss(str(USER_MODELS / entry["loss"])) if entry.get("loss") else None
        train, val = make_data(entry)
        num_classes = entry["num_classes"] if entry.get("num_classes") is not None else DATA_CLASSES + 1
        train_config = load_config(None, [f"{k}={v}" for k, v in entry["overrides"].items()]).train  # the user's settings
        return diagnose(factory, train, val_data=val, task=entry["task"], num_classes=num_classes, loss_fn=loss_fn,
                        steps=steps, overfit_steps=overfit_steps, train_config=train_config, out_dir=out_dir,
                        title=f"Diagnosis of {entry['name']}", on_update=on_update)
    except Exception as exc:  # noqa: BLE001 — the table must show a crash of the doctor, not stop at it
        return [Finding(id=DIAGNOSE_RAISED, severity="info", title=f"diagnose raised {type(exc).__name__}: {exc}",
                        evidence={"exception": type(exc).__name__, "message": str(exc)[:500]}, where=entry["name"])]


def raised_ids(findings: list[Finding]) -> list[str]:
    """IDs raised at error or warning, in order, without repeats."""
    return list(dict.fromkeys(f.id for f in findings if f.severity in RAISED))


def verdict(entry: dict[str, Any], findings: list[Finding]) -> str:
    """Broken: 'cause' (a root-cause ID raised), 'symptom' (only a consequence), 'missed'. Healthy: 'clean' or
    'N errors, M warnings'. A crash of diagnose itself is 'doctor crashed'."""
    if any(f.id == DIAGNOSE_RAISED for f in findings):
        return "doctor crashed"
    raised = set(raised_ids(findings))
    if entry["healthy"]:
        errors = sum(f.severity == "error" for f in findings)
        warnings = sum(f.severity == "warning" for f in findings)
        return "clean" if not errors and not warnings else f"{errors} errors, {warnings} warnings"
    if raised & set(entry["cause"]):
        return "cause"
    if raised & set(entry["symptoms"]):
        return "symptom"
    return "missed"


def _row(entry: dict[str, Any], findings: list[Finding], seconds: float) -> list[str]:
    failed = sum(f.id == "check.failed" for f in findings)
    crash = next((f.title for f in findings if f.id == DIAGNOSE_RAISED), "")
    raised = ", ".join(f"{f.id}({f.severity[0]})" for f in findings if f.severity in RAISED) or "-"
    return [entry["name"], "yes" if entry["healthy"] else "no", ", ".join(entry["cause"]) or "-",
            crash[:80] or raised, verdict(entry, findings), str(failed), f"{seconds:.0f}"]


def summary(entries: list[dict[str, Any]], verdicts: list[str]) -> list[str]:
    """Two lines: how the broken models fared (cause / symptom / missed) and how many healthy ones were flagged."""
    broken = [v for e, v in zip(entries, verdicts) if not e["healthy"]]
    healthy = [v for e, v in zip(entries, verdicts) if e["healthy"]]
    return [(f"broken models: {len(broken)} -- named by cause {broken.count('cause')}, symptom only {broken.count('symptom')}, "
              f"missed {broken.count('missed')}, doctor crashed {broken.count('doctor crashed')}"),
             (f"healthy models: {len(healthy)} -- clean {healthy.count('clean')}, "
              f"with errors/warnings {sum(v not in ('clean', 'doctor crashed') for v in healthy)}, "
              f"doctor crashed {healthy.count('doctor crashed')}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="monitored training steps (diagnose's default)")
    parser.add_argument("--overfit-steps", type=int, default=100, help="overfit-one-batch steps (diagnose's default)")
    parser.add_argument("--only", nargs="*", help="entry names to run (default: all)")
    parser.add_argument("--out-dir", type=Path, help="write each model's diagnosis under OUT_DIR/<name>")
    parser.add_argument("--json", type=Path, help="also write the per-model results (IDs, verdicts, seconds) to this file")
    args = parser.parse_args(argv)
    entries = [e for e in load_manifest() if not args.only or e["name"] in args.only]
    print(f"visiondoctor from {Path(visiondoctor.__file__).parent}; steps={args.steps} overfit_steps={args.overfit_steps}")
    header = ["model", "healthy", "expected cause", "raised (e=error, w=warning)", "verdict", "check.failed", "s"]
    print(" | ".join(header))
    verdicts, records = [], []
    for entry in entries:
        start = time.perf_counter()
        out = args.out_dir / entry["name"] if args.out_dir else None
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's progress bars would break up the table
            findings = run_entry(entry, steps=args.steps, overfit_steps=args.overfit_steps, out_dir=out)
        seconds = time.perf_counter() - start
        verdicts.append(verdict(entry, findings))
        records.append({"name": entry["name"], "healthy": entry["healthy"], "cause": entry["cause"], "verdict": verdicts[-1],
                        "raised": [[f.id, f.severity, f.where] for f in findings if f.severity in RAISED],
                        "info": [[f.id, f.title] for f in findings if f.severity == "info"], "seconds": round(seconds, 1)})
        print(" | ".join(_row(entry, findings, seconds)), flush=True)
    print()
    print("\n".join(summary(entries, verdicts)))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
