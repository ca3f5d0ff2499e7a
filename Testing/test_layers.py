"""The package's shape: layers import downward only (import-linter contracts in pyproject.toml), no import
cycle, segmenting loads nothing from training, and every module reaches the wheel and the Slicer extension."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "FusionLungSegLib"


def test_import_linter_contracts_hold():
    pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[test]'")
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0, "run `lint-imports` for the broken contract"


def _cycles(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], itertools.count()

    def visit(v):
        index[v] = low[v] = next(counter)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycle():
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (test extra)")
    assert _cycles(grimp.build_graph("FusionLungSegLib")) == []


def test_cycle_finder_finds_a_cycle():
    class Graph:  # a -> b -> a, c alone
        modules = {"a", "b", "c"}
        edges = {"a": {"b"}, "b": {"a"}, "c": set()}

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert _cycles(Graph()) == [["a", "b"]]


def test_segmenting_loads_nothing_from_training():
    code = (
        "import sys, FusionLungSegLib.segmenter, FusionLungSegLib.cli;"
        "print(sorted(m for m in sys.modules if m.startswith('FusionLungSegLib.training')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _subpackages() -> list[str]:
    return sorted(
        "FusionLungSegLib" + "".join("." + part for part in p.parent.relative_to(PACKAGE).parts)
        for p in PACKAGE.rglob("__init__.py")
    )


def test_wheel_lists_every_subpackage():
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(FusionLungSegLib(?:\.[a-z_]+)*)"', text))
    missing = [p for p in _subpackages() if p not in listed]
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_slicer_extension_installs_every_module():
    """The extension's CMake copies the package with one recursive glob: every module and subpackage."""
    cmake = (ROOT / "FusionLungSeg" / "CMakeLists.txt").read_text()
    match = re.search(r"file\((GLOB\w*) _lib_files RELATIVE \$\{_root\} ([^)]*)\)", cmake)
    assert match, "FusionLungSeg/CMakeLists.txt no longer globs the library"
    mode, patterns = match.group(1), match.group(2).split()
    assert mode == "GLOB_RECURSE", "a non-recursive glob leaves the subpackages out of the extension"
    globbed = {p.replace("${_root}/", "") for p in patterns}
    assert "FusionLungSegLib/*.py" in globbed
    modules = [p.relative_to(ROOT) for p in PACKAGE.rglob("*.py")]
    assert len(modules) > 30 and all(m.parts[0] == "FusionLungSegLib" and m.suffix == ".py" for m in modules)
