"""Findings and the catalogue of stable IDs. `Finding` itself is a shared contract
(visiondoctor.findings); the catalogue is generated from the checks' declarations
(visiondoctor.doctor.checks), so it cannot disagree with what the checks raise."""
from __future__ import annotations

from collections.abc import Iterator, Mapping

from visiondoctor.doctor.checks import documented_ids
from visiondoctor.findings import SEVERITY_ORDER, Finding, Severity

__all__ = ["CATALOGUE", "Finding", "SEVERITY_ORDER", "Severity"]


class _Catalogue(Mapping[str, str]):
    """ID -> one-line summary, read from the declarations when first used."""

    def __getitem__(self, key: str) -> str:
        return documented_ids()[key].summary

    def __iter__(self) -> Iterator[str]:
        return iter(documented_ids())

    def __len__(self) -> int:
        return len(documented_ids())


CATALOGUE: Mapping[str, str] = _Catalogue()
