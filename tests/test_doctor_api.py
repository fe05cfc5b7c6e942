"""The README example of the Doctor API (the docstring of visiondoctor.doctor.api), run exactly as written."""
import contextlib
import io
import textwrap

import torch

import visiondoctor.doctor.api as api
from visiondoctor.doctor.hooks import _RecordingMatcher


def example_code() -> str:
    doc = api.__doc__
    block = doc.split("::", 1)[1].split("\n\n`doc.step", 1)[0]
    return textwrap.dedent(block)


def test_readme_example_runs_and_reports():
    code = example_code()
    assert "Doctor(model, optimizer" in code and "doc.findings()" in code
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "doctor_api_example", "exec"), namespace)  # noqa: S102 — our own docstring
    doc, model = namespace["doc"], namespace["model"]
    findings = doc.findings()
    assert all(f.severity != "error" for f in findings), findings  # the example model is healthy
    assert len(doc.monitor.steps) == 20
    assert set(doc.monitor.loss_history) == {"bbox_regression", "classification"}
    assert not isinstance(model.proposal_matcher, _RecordingMatcher)  # close() restored the matcher


def test_doctor_sees_autocast_in_the_users_loop():
    """Seed 002: the user's own loop runs the backbone in fp32 and only the head under autocast."""
    from visiondoctor.doctor.zoo.common import TinyBackbone

    model = torch.nn.ModuleDict({"backbone": TinyBackbone(stages=2, outputs=(2,)), "head": torch.nn.Conv2d(32, 4, 1)})
    doc = api.Doctor(model, task="detection")
    images = torch.rand(2, 3, 32, 32)
    feats = model["backbone"](images)["0"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model["head"](feats)
    loss = out.float().pow(2).mean()
    loss.backward()
    doc.step({"loss": loss})
    doc.close()
    amp = [f for f in doc.findings() if f.id == "amp.partial"]
    assert amp and amp[0].severity == "warning"
    assert amp[0].evidence["per_module_group_under_autocast"]["head"] == "1/1"


def test_nonfinite_loss_names_component_and_step():
    from visiondoctor.doctor.zoo.common import tiny_ssd

    doc = api.Doctor(tiny_ssd(3))
    doc.step({"classification": torch.tensor(1.0), "bbox_regression": torch.tensor(0.5)})
    doc.step({"classification": torch.tensor(float("nan")), "bbox_regression": torch.tensor(0.5)})
    doc.close()
    bad = [f for f in doc.findings() if f.id == "loss.nonfinite"]
    assert bad and bad[0].evidence["what"] == "classification" and bad[0].evidence["step"] == 2


def test_docs_show_the_same_example():
    from pathlib import Path

    docs = (Path(__file__).parents[1] / "docs" / "doctor.md").read_text()
    assert example_code().strip() in docs
