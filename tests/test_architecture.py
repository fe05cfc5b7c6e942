"""The architecture is a contract, checked: the import-linter layers (pyproject.toml), imports at the
top of files, no module loaded by name, one plug-in mechanism that finds new plug-ins by itself."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "visiondoctor"


def _python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_layers_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], capture_output=True,
                            text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_imports_are_at_the_top_except_deferred_optional_extras():
    """A function-level import is allowed only for an optional extra, said so on its line."""
    found = []
    for path in _python_files():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and "deferred:" not in lines[sub.lineno - 1]:
                        found.append(f"{path.relative_to(PACKAGE.parent)}:{sub.lineno}: {lines[sub.lineno - 1].strip()}")
    assert not found, "imports inside functions:\n" + "\n".join(found)


def test_no_module_is_loaded_by_name_outside_the_registry():
    offenders = []
    for path in _python_files():
        if path.name == "registry.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name.endswith("import_module") or name == "__import__":
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}")
    assert not offenders, offenders


def test_registries_find_plug_ins_in_their_packages():
    from visiondoctor.data.formats import FORMATS
    from visiondoctor.data.synth import GENERATORS
    from visiondoctor.doctor.checks import CHECKS
    from visiondoctor.doctor.zoo import ZOO
    from visiondoctor.models.registry import MODELS
    from visiondoctor.tasks.pipeline import TASKS

    assert {"coco", "voc", "yolo", "masks", "streethazards"} <= set(FORMATS.names())
    assert {"shapes", "streets", "sketches"} <= set(GENERATORS.names())
    assert {"detection", "segmentation"} <= set(TASKS.names())
    assert "ssdlite320_mobilenet_v3_large" in MODELS and "random-assignment" in ZOO
    assert any("probe" in c.stages for c in CHECKS.values()) and any("run" in c.stages for c in CHECKS.values())
