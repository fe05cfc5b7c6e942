"""Every zoo case: the broken version raises its finding ID at error or warning; the healthy twin raises
no error and not the case's ID (at error or warning)."""
import pytest

from visiondoctor.doctor.findings import CATALOGUE
from visiondoctor.doctor.zoo import ZOO, run_case


def test_zoo_covers_the_issue_list():
    assert {
        "random-assignment", "aux-head-21", "anchors-too-large", "roi-scale", "autocast-head-only", "frozen-bn",
        "positives-only", "early-exit-threshold", "miou-on-10", "overfitting",
    } <= set(ZOO)
    for case in ZOO.values():
        assert case.expected_id in CATALOGUE, case.name


@pytest.mark.parametrize("name", sorted(ZOO))
def test_broken_case_is_flagged(name):
    findings = run_case(name, healthy=False)
    hits = [f for f in findings if f.id == ZOO[name].expected_id and f.severity in ("error", "warning")]
    assert hits, [(f.severity, f.id, f.title) for f in findings]
    assert all(f.evidence for f in hits) and all(f.fix for f in hits)
    assert not [f for f in findings if f.id == "check.failed"], findings


@pytest.mark.parametrize("name", sorted(ZOO))
def test_healthy_twin_has_no_error(name):
    findings = run_case(name, healthy=True)
    assert not [f for f in findings if f.severity == "error"], [(f.id, f.title) for f in findings]
    assert not [f for f in findings if f.id == ZOO[name].expected_id and f.severity in ("error", "warning")]
    assert not [f for f in findings if f.id == "check.failed"], findings
