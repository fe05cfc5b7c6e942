"""The bug zoo: each failure from the seeds as a small broken model or config, with its healthy twin.

    from visiondoctor.doctor.zoo import ZOO, run_case
    findings = run_case("random-assignment", healthy=False)

Every case states the finding ID the doctor must raise on the broken version (at error or
warning); the healthy twin must raise no error. `benchmarks/doctor.py` prints the table.
"""
from __future__ import annotations

from visiondoctor.doctor.zoo.case import (
    ZOO,
    ZooCase,
    ZooOutcome,
    evaluate_case,
    run_case,
)

__all__ = ["ZOO", "ZooCase", "ZooOutcome", "evaluate_case", "run_case"]
