"""history.csv rows -> loss curves per component, the final train/val gap, and what the curves show.

Shared by the single-run report and the comparison report, so both judge a gap the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from visiondoctor.report.inputs import finite

TOTAL = "loss"
RISE = 0.05  # validation loss this far above its minimum (relative) counts as rising


@dataclass
class Curve:
    x: list[float]
    y: list[float]
    epoch: list[float]


def loss_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """`loss` first, then every `loss_<component>` column that holds a number somewhere."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    numeric = [c for c in cols if (c == TOTAL or c.startswith("loss_")) and any(finite(r.get(c)) is not None for r in rows)]
    return sorted(numeric, key=lambda c: (c != TOTAL, cols.index(c)))


def component_name(column: str) -> str:
    return "total loss" if column == TOTAL else column[len("loss_"):].replace("_", " ")


def x_axis(rows: Sequence[dict[str, Any]]) -> str:
    """`step` when the history has it, else `epoch`."""
    return "step" if any(finite(r.get("step")) is not None for r in rows) else "epoch"


def curve(rows: Sequence[dict[str, Any]], column: str, split: str, xname: str) -> Curve:
    c = Curve([], [], [])
    for r in rows:
        if str(r.get("split", "train")) != split:
            continue
        x, y = finite(r.get(xname)), finite(r.get(column))
        if x is None or y is None:
            continue
        c.x.append(x)
        c.y.append(y)
        c.epoch.append(finite(r.get("epoch")) or 0.0)
    return c


@dataclass
class Gap:
    component: str
    train: float | None  # mean over the last epoch's training rows
    val: float | None  # last evaluation
    best_val: float | None
    best_epoch: float | None
    judgement: str

    @property
    def difference(self) -> float | None:
        return None if self.train is None or self.val is None else self.val - self.train


def gap(rows: Sequence[dict[str, Any]], column: str) -> Gap:
    """Train vs validation at the end of the run, and what the validation curve did."""
    xname = x_axis(rows)
    tr, va = curve(rows, column, "train", xname), curve(rows, column, "val", xname)
    train_last = None
    if tr.y:
        last_epoch = tr.epoch[-1]
        train_last = float(np.mean([y for y, e in zip(tr.y, tr.epoch) if e == last_epoch]))
    if not va.y:
        return Gap(component_name(column), train_last, None, None, None, "no validation loss recorded")
    i_best = int(np.argmin(va.y))
    best, last = va.y[i_best], va.y[-1]
    return Gap(component_name(column), train_last, last, best, va.epoch[i_best], judge(tr, va))


def judge(train: Curve, val: Curve) -> str:
    """What the curves show. A val loss above train loss alone is not overfitting:
    augmentation, dropout and batch statistics act only in training. Overfitting shows
    as validation loss rising from its minimum while training loss keeps falling."""
    if len(val.y) < 2:
        return "one evaluation only: no trend to judge"
    i_best = int(np.argmin(val.y))
    best, last = val.y[i_best], val.y[-1]
    train_falling = _falling_after(train, val.x[i_best])
    if i_best < len(val.y) - 1 and last > best * (1 + RISE) + 1e-12:
        rise = (last - best) / abs(best) if best else float("inf")
        if train_falling:
            return (f"overfitting: validation rose {rise:.0%} from its minimum at epoch {val.epoch[i_best]:g} "
                    "while training kept falling; stop earlier or regularise")
        return f"validation rose {rise:.0%} from its minimum at epoch {val.epoch[i_best]:g} (training flat too: check the learning rate)"
    final_train = train.y[-1] if train.y else None
    if final_train is not None and last > final_train:
        return "validation above training but still at its minimum: a gap, not evidence of overfitting"
    return "validation still falling or flat at its minimum: no sign of overfitting"


def _falling_after(train: Curve, x0: float) -> bool:
    after = [y for x, y in zip(train.x, train.y) if x >= x0]
    before = [y for x, y in zip(train.x, train.y) if x <= x0]
    if len(after) < 2 or not before:
        return False
    k = max(1, len(after) // 5)
    return float(np.mean(after[-k:])) < float(np.mean(before[-k:]))
