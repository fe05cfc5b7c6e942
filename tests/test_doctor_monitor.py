"""The training monitor inside the engine's Trainer, and the overfit-one-batch probe."""
import torch
from torch import nn

from visiondoctor.doctor.checks.fit import check_overfit
from visiondoctor.doctor.hooks import _RecordingMatcher
from visiondoctor.doctor.model_io import ModelIO
from visiondoctor.doctor.monitor import TrainingMonitor
from visiondoctor.doctor.overfit import overfit_one_batch
from visiondoctor.doctor.training import train_briefly
from visiondoctor.doctor.zoo.common import ListDataset, batch, squares, tiny_ssd
from visiondoctor.doctor.zoo.detection import RandomMatcher


def test_monitor_in_trainer_sees_random_assignment_and_restores_matchers():
    torch.manual_seed(0)
    model = tiny_ssd(3)
    model.proposal_matcher = RandomMatcher()
    monitor = TrainingMonitor(every=5, min_steps_for_outputs=10)
    train_briefly(model, ListDataset(squares(16)), ModelIO(), steps=20, batch_size=4, lr=1e-3, callbacks=[monitor])
    found = {f.id: f for f in monitor.findings()}
    assert found["assignment.low-iou-positives"].severity == "error"
    assert found["assignment.low-iou-positives"].evidence["step"] == 20
    assert isinstance(model.proposal_matcher, RandomMatcher)  # the wrapper is gone after training
    assert len(monitor.output_stats) == 3  # steps 10, 15, 20
    assert set(monitor.grad_history) == {"backbone", "head"} and len(monitor.grad_history["head"]) == 20


class NaNAtStep(nn.Module):
    def __init__(self, bad_step: int):
        super().__init__()
        self.inner = tiny_ssd(3)
        self.calls = 0
        self.bad_step = bad_step

    def forward(self, images, targets=None):
        out = self.inner(images, targets)
        if self.training:
            self.calls += 1
            if self.calls == self.bad_step:
                out["bbox_regression"] = out["bbox_regression"] * float("nan")
        return out


def test_nonfinite_component_and_step_from_the_trainer():
    monitor = TrainingMonitor(every=1000)
    train_briefly(NaNAtStep(4), ListDataset(squares(8)), ModelIO(), steps=6, batch_size=2, callbacks=[monitor])
    bad = [f for f in monitor.findings() if f.id == "loss.nonfinite"]
    assert bad[0].evidence["what"] == "bbox_regression" and bad[0].evidence["step"] == 4
    assert bad[0].severity == "error"


def test_overfit_probe_separates_healthy_from_random_assignment():
    images, targets = batch(squares(2, seed=3))
    torch.manual_seed(0)
    healthy = overfit_one_batch(tiny_ssd(3), images, targets, steps=150)
    assert healthy.passed and check_overfit(healthy, 2) == []
    torch.manual_seed(0)
    model = tiny_ssd(3)
    model.proposal_matcher = RandomMatcher()
    broken = overfit_one_batch(model, images, targets, steps=150)
    f = check_overfit(broken, 2)
    assert f and f[0].id == "fit.overfit-one-batch" and f[0].severity == "error"
    assert not isinstance(model.proposal_matcher, _RecordingMatcher)


def test_overfit_probe_is_inconclusive_while_the_loss_still_falls():
    from visiondoctor.doctor.overfit import OverfitResult

    falling = [100.0 * 0.98 ** i for i in range(100)]  # 13 % of the start after 100 steps, still dropping
    result = OverfitResult(100, falling[0], falling[-1], falling[-1], 0.5, "ap50", False, falling)
    assert check_overfit(result, 4)[0].severity == "info"  # inconclusive, not broken (issue 17: severity you can trust)
    stuck = [100.0] * 50 + [60.0 + (i % 3) for i in range(50)]
    result = OverfitResult(100, stuck[0], stuck[-1], min(stuck), 0.1, "ap50", False, stuck)
    assert check_overfit(result, 4)[0].severity == "error"


def test_diagnose_end_to_end_names_the_root_cause_first(tmp_path):
    """Seed 000 end to end: the random assignment is the first error; its symptoms follow, with the score plot."""
    import json

    from visiondoctor.doctor.diagnose import diagnose

    def factory(num_classes):
        model = tiny_ssd(num_classes)
        model.proposal_matcher = RandomMatcher()
        return model

    torch.manual_seed(0)
    findings = diagnose(factory, ListDataset(squares(16)), val_data=ListDataset(squares(8, seed=1)), num_classes=3,
                        steps=30, overfit_steps=60, out_dir=tmp_path)
    assert findings[0].id in ("assignment.low-iou-positives", "assignment.location-blind") and findings[0].severity == "error"
    ids = {f.id for f in findings if f.severity == "error"}
    assert "fit.overfit-one-batch" in ids
    # the collapse is a symptom: after 30 steps only reported as inconclusive, with the score histogram beside it
    collapse = next(f for f in findings if f.id == "output.background-collapse")
    assert collapse.evidence["plot"] == "plots/doctor_fg_scores.png" and (tmp_path / collapse.evidence["plot"]).exists()
    assert json.loads((tmp_path / "diagnosis.json").read_text())[0]["id"] == findings[0].id


def test_monitor_summary_of_a_healthy_run():
    torch.manual_seed(0)
    model = tiny_ssd(3)
    monitor = TrainingMonitor(every=5, min_steps_for_outputs=5)
    train_briefly(model, ListDataset(squares(8)), ModelIO(), steps=10, batch_size=4, callbacks=[monitor])
    summary = monitor.summary()
    matcher = summary["matchers"]["proposal_matcher"]
    assert summary["steps"] == 10 and matcher["images"] == 8  # steps 5 and 10, 4 images each
    assert matcher["positive_iou_quantiles_10_50_90"][1] >= 0.5  # SSDMatcher: positives overlap their box
    assert summary["outputs"]["step"] == 10
