"""The Python API: the README's example runs as written; `import visiondoctor` stays light; the
keyword arguments build the config the command line builds."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import visiondoctor as vd
from visiondoctor.cli import _config, build_parser

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The first Python block of the README's "Python API" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example writes data/ and runs/ relative to the working directory
    exec(compile(readme_example(), "README.md (Python API)", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "notebook"
    assert "step 3: val mAP" in out, out  # the callback saw the evaluation (24 images / batch 8 = 3 steps)
    assert f"{Path('runs/notebook/report.html')}" in out and (run / "report.html").exists()
    assert json.loads((run / "metrics_test.json").read_text())["num_images"] == 4  # the test split, as printed
    assert json.loads((run / "metrics.json").read_text())["num_images"] == 8  # the validation split's, kept
    predictions = json.loads((run / "predict" / "predictions.json").read_text())
    assert len(predictions["images"]) == 4 and len(list((run / "predict").glob("*.png"))) == 4
    findings = json.loads((tmp_path / "runs" / "my_model-diagnosis" / "diagnosis.json").read_text())
    assert findings and all(f"{f['severity']} {f['id']} {f['title']}" in out for f in findings)


def test_importing_the_package_does_not_load_torch():
    code = ("import sys, visiondoctor, visiondoctor.config; assert 'torch' not in sys.modules, 'torch loaded'; "
            "assert callable(visiondoctor.train) and 'torch' in sys.modules; print(visiondoctor.__version__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == vd.__version__


def test_every_exported_name_resolves():
    for name in vd.__all__:
        assert getattr(vd, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        vd.no_such_name  # noqa: B018


def test_keyword_arguments_build_the_config_the_command_line_builds():
    argv = ["train", "--data", "d", "--model", "ssdlite_mobilenet_v3_small", "--epochs", "3", "--image-size", "96",
            "--name", "x", "--device", "cpu", "--set", "train.lr=0.01", "--set", "train.epochs=5"]
    from_cli = _config(build_parser().parse_args(argv))
    from_api = vd.build_config(data="d", model="ssdlite_mobilenet_v3_small", epochs=3, image_size=96, name="x",
                               device="cpu", overrides=["train.lr=0.01", "train.epochs=5"])
    assert from_api == from_cli
    assert from_api.train.epochs == 5 and from_api.train.lr == 0.01  # overrides win, as --set does
    with pytest.raises(TypeError, match="epoch"):
        vd.build_config(epoch=3)
    odd = vd.build_config(name="yes", data="data/2026: march", device="cuda:1")  # YAML would read bool, mapping
    assert (odd.name, odd.data.path, odd.train.device) == ("yes", "data/2026: march", "cuda:1")


def test_diagnose_takes_in_memory_samples(tmp_path):
    from visiondoctor.doctor.zoo.common import squares, tiny_ssd

    findings = vd.diagnose(tiny_ssd, squares(8), num_classes=3, steps=4, overfit_steps=4, out=tmp_path)
    assert all(isinstance(f, vd.Finding) for f in findings)
    assert json.loads((tmp_path / "diagnosis.json").read_text())  # written where asked
