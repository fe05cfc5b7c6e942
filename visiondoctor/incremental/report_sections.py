"""The report's class-incremental section: per-phase AP on old / new / all seen classes,
forgetting, and what each phase trained on (read from the run's phases.json)."""
from __future__ import annotations

import io
from typing import Any

import matplotlib
import matplotlib.pyplot as plt

from visiondoctor.report.sections import Figure, Paragraph, Section, Table, register_section
from visiondoctor.rundir import RunDir

RESULTS_FILE = "phases.json"


def _curves_png(entries: list[dict[str, Any]], method: str) -> bytes:
    matplotlib.use("Agg")

    phases = [e["phase"] for e in entries]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, style in (("all", "o-"), ("old", "s--"), ("new", "^:")):
        values = [e["map50"].get(key) for e in entries]
        xs = [p for p, v in zip(phases, values) if v is not None]
        left.plot(xs, [v for v in values if v is not None], style, label=f"{key} classes")
    left.set(xlabel="phase", ylabel="mAP@0.5", title=f"AP after each phase ({method})", ylim=(0, 1), xticks=phases)
    left.legend(fontsize=8)
    xs = [e["phase"] for e in entries if e.get("forgetting_ap50") is not None]
    ys = [e["forgetting_ap50"] for e in entries if e.get("forgetting_ap50") is not None]
    right.bar(xs, ys, color="#c0504d")
    right.axhline(0, color="black", linewidth=0.8)
    # at least +-0.1 AP on the axis, so a tiny fall does not look like a large one
    right.set(xlabel="phase", ylabel="mean AP@0.5 fall of old classes", title="Forgetting", xticks=phases,
              ylim=(min([-0.1, *ys]) * 1.1, max([0.1, *ys]) * 1.1))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _num(v: Any) -> Any:
    return "n/a" if v is None else round(float(v), 4)


@register_section(42, title="Incremental phases", needs=(RESULTS_FILE,), optional=True)
def incremental_section(run: RunDir) -> Section | None:
    path = run.path / RESULTS_FILE
    if not path.exists():
        return None
    results = run.read_json(RESULTS_FILE)
    entries = results.get("phases") or []
    if not entries:
        return None
    method = str(results.get("method", "?"))
    final = results.get("final", {})
    blocks: list[Any] = [Paragraph(
        f"Method: {method}. {len(entries)} of {results.get('num_phases', len(entries))} phases done, evaluated on the "
        f"{results.get('eval_split', '?')} split. Final mAP@0.5 on all seen classes: {_num(final.get('map50_all'))}; "
        f"forgetting (mean fall of each old class's AP@0.5 since the phase that taught it): "
        f"{_num(final.get('forgetting_ap50'))}.")]
    blocks.append(Figure("incremental_phases", _curves_png(entries, method),
                         caption="mAP@0.5 on old, new and all seen classes after each phase; forgetting per phase."))
    rows = []
    for e in entries:
        train = e.get("train", {})
        rows.append([e["phase"], ", ".join(e.get("new_classes", [])), _num(e["map50"].get("old")),
                     _num(e["map50"].get("new")), _num(e["map50"].get("all")), _num(e.get("forgetting_ap50")),
                     train.get("phase_images", "reused" if e.get("reused_from") else "n/a"),
                     train.get("memory_images", 0), train.get("steps", "n/a")])
    blocks.append(Table(["phase", "new classes", "mAP50 old", "mAP50 new", "mAP50 all", "forgetting",
                         "phase images", "memory images", "steps"], rows))
    worst = sorted(((v, k) for k, v in (entries[-1].get("forgetting_per_class") or {}).items()), reverse=True)[:5]
    if worst:
        blocks.append(Paragraph("Most forgotten classes (AP@0.5 fall): " +
                                ", ".join(f"{k} {v:+.3f}" for v, k in worst), style="note"))
    return Section("Incremental phases", blocks)
