"""A check that fails internally becomes an info finding naming it; a model that raises becomes an error
finding naming the pass; neither stops the run."""
import torch
from torch import nn

from visiondoctor.doctor.findings import Finding
from visiondoctor.doctor.runner import dedupe, run_checks, sort_findings
from visiondoctor.doctor.static import static_checks
from visiondoctor.doctor.zoo.common import batch, squares, tiny_ssd


def good(x):
    return [Finding("loss.imbalance", "warning", f"seen {x}")]


def broken(x):
    raise ZeroDivisionError("boom")


def test_failing_check_becomes_info_and_others_run():
    findings = run_checks([broken, good, broken], 3)
    assert [f.id for f in findings] == ["check.failed", "loss.imbalance", "check.failed"]
    failed = findings[0]
    assert failed.severity == "info"
    assert "broken" in failed.where and failed.evidence["exception"] == "ZeroDivisionError"
    assert "boom" in failed.title


def test_sort_and_dedupe():
    fs = [Finding("a", "info", "x"), Finding("b", "error", "y"), Finding("a", "warning", "z")]
    assert [f.severity for f in sort_findings(fs)] == ["error", "warning", "info"]
    assert [(f.id, f.severity) for f in dedupe(fs)] == [("a", "warning"), ("b", "error")]


class EvalBreaks(nn.Module):
    """A detector whose eval-mode forward raises: the eval probe fails, the training-mode checks still run."""

    def __init__(self):
        super().__init__()
        self.inner = tiny_ssd(3)
        self.unused = nn.Linear(4, 4)

    def forward(self, images, targets=None):
        if not self.training:
            raise RuntimeError("eval path not implemented")
        return self.inner(images, targets)


def test_probe_failure_is_reported_and_the_rest_still_runs():
    images, targets = batch(squares(2))
    findings, obs = static_checks(EvalBreaks(), images, targets, num_classes=3)
    ids = [f.id for f in findings]
    raised = [f for f in findings if f.id == "model.raised"]  # the user's model failed, not our check: an error
    assert raised and raised[0].severity == "error" and "eval path not implemented" in raised[0].title
    assert "check.failed" not in ids
    assert "params.no-gradient" in ids  # from the training pass, which worked
    assert obs is not None and "eval" in obs.failures


def test_probes_leave_the_model_unchanged():
    torch.manual_seed(0)
    model = tiny_ssd(3)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    matcher = model.proposal_matcher
    static_checks(model, *batch(squares(2)), num_classes=3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and model.proposal_matcher is matcher
    assert all(p.grad is None for p in model.parameters())
