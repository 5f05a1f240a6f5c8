"""The import graph runs down the pipeline only, and holds no cycle.

Every `import` in src/covidxr (at module level or inside a function) is read with `ast`. An import of a
module in a higher layer fails, and so does any import cycle: a function-level import cannot hide one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "covidxr"
TESTS = Path(__file__).resolve().parent
# The pipeline order, bottom first. A module belongs to the entry naming it or its longest named parent;
# `covidxr` itself (the package's __init__, which re-exports load_model) is matched exactly.
LAYERS = [
    ("covidxr.errors", "covidxr.progress", "covidxr.commandline", "covidxr.registry", "covidxr.paths"),
    ("covidxr.data", "covidxr.config", "covidxr.recipes"),
    ("covidxr.runs",),
    ("covidxr.metrics",),
    ("covidxr.models",),
    ("covidxr.lungs",),
    ("covidxr.inputcheck",),
    ("covidxr.training",),
    ("covidxr.evaluation",),
    ("covidxr.explain", "covidxr.reporting"),
    ("covidxr.predict", "covidxr.export", "covidxr.serving", "covidxr.dicom"),
    ("covidxr.engines",),
    ("covidxr.cli", "covidxr.__main__", "covidxr"),
]
LEAN_RUNS_IMPORTS = {"numpy", "pandas", "pydantic"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    if module == "covidxr":
        return len(LAYERS) - 1
    candidates = [module] + [module.rsplit(".", k)[0] for k in range(1, module.count("."))]
    for candidate in candidates:
        for rank, names in enumerate(LAYERS):
            if candidate in names and candidate != "covidxr":
                return rank
    raise AssertionError(f"{module} has no layer: add it (or its package) to LAYERS in tests/test_layering.py")


def imported_names(path: Path, source: str | None = None) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a file (or in `source`, read as that file);
    `from a import b` names a.b when b is a module of this package, else a."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:
                found.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, node.lineno))
    return found


def own_imports(path: Path) -> list[tuple[str, int]]:
    return sorted({(name, line) for name, line in imported_names(path)
                   if name == "covidxr" or name.startswith("covidxr.")}, key=lambda item: item[1])


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_no_import_runs_up_the_pipeline():
    upward = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} (layer {layer(target)} > {layer(module)})"
              for module, path in MODULES.items() for target, line in own_imports(path)
              if layer(target) > layer(module)]
    assert not upward, "imports that run up the pipeline:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = {module: {target for target, _ in own_imports(path) if target != module and target in MODULES}
             for module, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return trail + [module, target]
            if target not in state and (cycle := visit(target, trail + [module])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            assert cycle is None, "import cycle: " + " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_the_runs_package_imports_only_the_standard_library_numpy_pandas_and_pydantic():
    allowed = set(sys.stdlib_module_names) | LEAN_RUNS_IMPORTS
    for module, path in MODULES.items():
        if module == "covidxr.runs" or module.startswith("covidxr.runs."):
            for target, line in imported_names(path):
                top = target.split(".")[0]
                if top == "covidxr":
                    assert target in ("covidxr.errors", "covidxr.paths") or target.startswith("covidxr.runs") \
                        or target.startswith("covidxr.data"), f"{path.name}:{line} imports {target}"
                else:
                    assert top in allowed, f"{path.name}:{line} imports {target}"


def test_importing_the_runs_package_loads_no_heavy_library():
    heavy = ["torch", "lightning", "sklearn", "matplotlib", "timm", "onnxruntime", "scipy"]
    code = f"import sys, covidxr.runs; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


@pytest.mark.parametrize("source, expected", [
    ("from covidxr.training.run import train\n", ["covidxr.training.run"]),
    ("def f():\n    from covidxr.evaluation import audit\n", ["covidxr.evaluation.audit"]),
    ("from covidxr import __version__\n", ["covidxr"]),
    ("from . import metrics\n", ["covidxr.evaluation.metrics"]),
])
def test_imports_are_found_at_any_depth(source, expected):
    assert [name for name, _ in imported_names(PACKAGE / "evaluation" / "example.py", source)] == expected


def test_the_sources_cite_the_projects_own_reference_and_its_sections_exist():
    import re

    reference = PACKAGE.parents[1] / "docs" / "reference.md"
    headings = {line.lstrip("#").strip() for line in reference.read_text().splitlines() if line.startswith("#")}
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix not in (".py", ".html", ".js"):
            continue
        text = path.read_text()
        assert "CONTRACTS" not in text and "ARCHITECTURE.md" not in text, f"{path} cites a file users do not have"
        for section in re.findall(r'docs/reference\.md,\s+"([^"]+)"', text):
            assert section in headings, f"{path} cites section {section!r}, not a heading of {reference.name}"


def imported_test_modules(source: str, filename: str = "<test>") -> list[str]:
    """The `test_*` modules a tests/ file's source imports (at any depth); shared helpers live in conftest.py
    or a non-test module such as hostile.py."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [node.module] if node.module else [alias.name for alias in node.names]
    return [name for name in found if name.split(".")[-1].startswith("test_")]



@pytest.mark.parametrize("source, expected", [
    ("from test_evaluation import CHROMIUM_FLAGS\n", ["test_evaluation"]),
    ("def f():\n    import test_dicom as d\n", ["test_dicom"]),
    ("from . import test_serving\n", ["test_serving"]),
    ("from conftest import free_port\nimport hostile\n", []),
])
def test_imports_of_test_modules_are_found_at_any_depth(source, expected):
    assert imported_test_modules(source) == expected


def test_no_test_module_imports_another():
    offending = {path.name: names for path in sorted(TESTS.glob("*.py"))
                 if (names := imported_test_modules(path.read_text(), str(path)))}
    assert offending == {}, "test modules import test modules (move what they share into conftest.py)"


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                         ("", pytest.skip.Exception), ("false", pytest.skip.Exception)])
def test_a_missing_requirement_fails_under_ci_and_skips_elsewhere_saying_what_and_how(monkeypatch, ci, outcome):
    from conftest import import_or_required_under_ci, required_under_ci

    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=r"frob is missing \(apt-get install frob\)$"):
        required_under_ci("frob", "apt-get install frob")
    with pytest.raises(outcome, match=r"the Python package no_such_module_x is missing \(pip install x\)$"):
        import_or_required_under_ci("no_such_module_x", "pip install x")
    assert import_or_required_under_ci("json", "stdlib").dumps([1]) == "[1]"
