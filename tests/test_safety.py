"""Loading safely: nothing a checkpoint, a config or a dataset contains is executed; data strings
are escaped in HTML; dataset file names stay inside the dataset root.

The first half reads the package's source (every call site, by its syntax tree), so a new
`torch.load` without `weights_only=True` or a `yaml.load` fails here, naming the file and line.
The second half checks the same properties by behaviour.
"""
from __future__ import annotations

import ast
import io
import pickle
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "visiondoctor"
SOURCES = sorted(PACKAGE.rglob("*.py"))

# The only places that execute a Python file: each takes a `path.py:function` the user typed
# (--model-file / --loss-file), and nothing else calls them with a name from data or config.
USER_CODE_LOADERS = {("doctor/diagnose.py", "load_callable"), ("tasks/segmentation.py", "load_loss_file")}
# importlib.import_module with a computed name: only the plug-in registry, whose names come from a
# walk over the visiondoctor package itself, never from user input.
INTERNAL_DYNAMIC_IMPORTS = {"registry.py"}


def calls() -> list[tuple[str, int, str, ast.Call, str]]:
    """(file, line, dotted callee, node, enclosing function) for every call in the package."""
    out = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = str(path.relative_to(PACKAGE))
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]:
            for node in ast.walk(func):
                if isinstance(node, ast.Call):
                    out.append((rel, node.lineno, _dotted(node.func), node, getattr(func, "name", "<module>")))
    # a call inside a function is also seen from the module level: keep the innermost owner
    best: dict[tuple[str, int, int], tuple] = {}
    for rel, line, name, node, owner in out:
        key = (rel, line, node.col_offset)
        if key not in best or best[key][4] == "<module>":
            best[key] = (rel, line, name, node, owner)
    return list(best.values())


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _kwarg(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<computed>"
    return None


CALLS = calls()


def test_the_scan_sees_the_package():
    names = {name for _, _, name, _, _ in CALLS}
    assert len(SOURCES) > 30 and "torch.load" in names and "yaml.safe_load" in names  # the scan is not vacuous


def test_every_torch_load_is_weights_only():
    bad = [f"{f}:{line}" for f, line, name, call, _ in CALLS
           if name.endswith("torch.load") and _kwarg(call, "weights_only") is not True]
    assert not bad, f"torch.load without weights_only=True (unpickles arbitrary objects): {bad}"


def test_no_unpickling_anywhere():
    unsafe = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "marshal.load",
              "marshal.loads", "shelve.open", "torch.jit.load", "jit.load", "joblib.load"}
    bad = [f"{f}:{line} {name}" for f, line, name, _, _ in CALLS if name in unsafe]
    bad += [f"{f}:{line} np.load(allow_pickle=True)" for f, line, name, call, _ in CALLS
            if name.endswith(".load") and _kwarg(call, "allow_pickle") not in (None, False)]
    assert not bad, bad


def test_yaml_is_only_safe_loaded():
    bad = [f"{f}:{line} {name}" for f, line, name, _, _ in CALLS
           if name in ("yaml.load", "yaml.load_all", "yaml.full_load", "yaml.unsafe_load", "yaml.unsafe_load_all")]
    text = "\n".join(p.read_text(encoding="utf-8") for p in SOURCES)
    for loader in ("yaml.Loader", "yaml.FullLoader", "yaml.UnsafeLoader", "yaml.CLoader"):
        if loader in text:
            bad.append(loader)
    assert not bad, bad


def test_no_eval_or_exec_of_strings():
    bad = [f"{f}:{line} {name}" for f, line, name, _, _ in CALLS if name in ("eval", "exec", "compile", "__import__")]
    assert not bad, bad


def test_user_files_are_executed_only_by_the_loaders_the_user_names():
    executing = {(f, owner) for f, _, name, _, owner in CALLS
                 if name.endswith(("exec_module", "spec_from_file_location", "run_path", "run_module"))}
    assert executing <= USER_CODE_LOADERS, executing - USER_CODE_LOADERS
    dynamic = {f for f, _, name, call, _ in CALLS
               if name.endswith("import_module") and call.args
               and not (isinstance(call.args[0], ast.Constant) and str(call.args[0].value).startswith("visiondoctor"))
               and not (isinstance(call.args[0], ast.JoinedStr) and call.args[0].values
                        and isinstance(call.args[0].values[0], ast.Constant)
                        and str(call.args[0].values[0].value).startswith("visiondoctor."))}
    assert dynamic <= INTERNAL_DYNAMIC_IMPORTS, dynamic - INTERNAL_DYNAMIC_IMPORTS


def test_html_is_rendered_with_autoescape():
    envs = [(f, line, _kwarg(call, "autoescape")) for f, line, name, call, _ in CALLS if name.endswith("Environment")]
    assert envs and all(value is True for _, _, value in envs), envs
    for template in (PACKAGE / "report" / "templates").glob("*.j2"):
        for n, line in enumerate(template.read_text(encoding="utf-8").splitlines(), 1):
            if "|safe" in line.replace(" ", ""):
                # the one raw slot: Html blocks, whose producers must escape (checked below)
                assert "block.markup" in line, f"{template.name}:{n}: |safe on data"
    producers = {f for f, _, name, _, _ in CALLS if name.split(".")[-1] == "Html"}
    for f in producers:
        assert "escape(" in (PACKAGE / f).read_text(encoding="utf-8"), f"{f} builds raw Html without escaping"


# ----- behaviour ---------------------------------------------------------------------------------
class Payload:
    """Stands for any object a malicious weights file could carry (its unpickling runs code)."""


def test_forbid_unpickling_covers_torchvisions_pretrained_weights_loader(tmp_path):
    """torch.hub (torchvision's weights loader) passes weights_only=False; a file dropped into
    the hub cache by hand would be unpickled unless visiondoctor forbids it."""
    from visiondoctor.safety import forbid_unpickling

    buf = io.BytesIO()
    torch.save({"weight": torch.ones(2), "payload": Payload()}, buf)
    (tmp_path / "weights-12345678.pth").write_bytes(buf.getvalue())
    url = "https://download.invalid/weights-12345678.pth"  # cached: never downloaded
    loaded = torch.hub.load_state_dict_from_url(url, model_dir=str(tmp_path), progress=False)
    assert isinstance(loaded["payload"], Payload)  # the default path does unpickle
    with forbid_unpickling(), pytest.raises(pickle.UnpicklingError):
        torch.hub.load_state_dict_from_url(url, model_dir=str(tmp_path), progress=False)
    # plain tensors still load inside
    torch.save({"weight": torch.ones(2)}, tmp_path / "plain-12345678.pth")
    with forbid_unpickling():
        plain = torch.hub.load_state_dict_from_url("https://download.invalid/plain-12345678.pth",
                                                   model_dir=str(tmp_path), progress=False)
    assert torch.equal(plain["weight"], torch.ones(2))


def test_python_tags_in_yaml_are_refused_not_run(tmp_path):
    from visiondoctor.config import ConfigError, load_config
    from visiondoctor.data.formats.yolo import _yaml_names
    from visiondoctor.data.samples import DataError

    marker = tmp_path / "ran"
    evil = f'!!python/object/apply:os.system ["touch {marker}"]\n'
    (tmp_path / "config.yaml").write_text(f"name: {evil}")
    with pytest.raises(ConfigError, match="config.yaml"):
        load_config(tmp_path / "config.yaml")
    with pytest.raises(DataError, match="data.yaml"):
        _yaml_names(tmp_path / "data.yaml", f"names: {evil}")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../outside.jpg", "a/../../outside.jpg", "/etc/passwd", "", "x\x00.jpg"])
def test_dataset_file_names_cannot_leave_the_root(tmp_path, name):
    from visiondoctor.data.images import resolve_image_path
    from visiondoctor.data.samples import DataError

    with pytest.raises(DataError, match="annotations.json: image 7"):
        resolve_image_path(tmp_path / "data", name, "annotations.json", "image 7")


def test_dataset_file_names_inside_the_root_resolve(tmp_path):
    from visiondoctor.data.images import resolve_image_path

    assert resolve_image_path(tmp_path, "sub/../img.jpg", "a.json", "image 1") == tmp_path / "img.jpg"


def test_data_strings_are_escaped_in_the_report():
    from visiondoctor.report.html import render_page
    from visiondoctor.report.sections import Paragraph, Section

    evil = '<script>alert("class name")</script>'
    page = render_page(evil, [Section(title=evil, blocks=[Paragraph(evil)])])
    assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_safetensors_round_trip(tmp_path):
    pytest.importorskip("safetensors")
    from visiondoctor.safety import load_safetensors, save_safetensors

    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)  # strided tensors are written contiguous
    path = save_safetensors(conv.state_dict(), tmp_path / "weights.safetensors")
    loaded = load_safetensors(path)
    assert set(loaded) == {"weight", "bias"} and torch.equal(loaded["weight"], conv.weight.detach())
