"""The Slicer module file without the Slicer app: widget names exist in the .ui, the widget stays thin."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET

from conftest import REPO

MODULE = REPO / "FusionLungSeg" / "FusionLungSeg.py"
UI = REPO / "Resources" / "UI" / "FusionLungSeg.ui"


def _ui_names() -> set[str]:
    return {w.get("name") for w in ET.parse(UI).iter("widget")}


def test_every_ui_name_used_by_the_module_exists_in_the_ui_file():
    used = set(re.findall(r"\bui\.([A-Za-z_]\w*)", MODULE.read_text()))
    assert used, "the module uses no ui widgets?"
    missing = used - _ui_names()
    assert not missing, f"used in FusionLungSeg.py but not in {UI.name}: {sorted(missing)}"


def test_panel_has_the_documented_controls():
    names = _ui_names()
    for name in (
        "inputVolumeSelector",
        "outputSegmentationSelector",
        "deviceComboBox",
        "precisionComboBox",
        "fastModeCheckBox",
        "applyButton",
        "cancelButton",
        "progressBar",
        "statusLabel",
        "volumesTableWidget",
        "show3DCheckBox",
    ):
        assert name in names, name
    title = re.search(r'self\.parent\.title = "([^"]+)"', MODULE.read_text()).group(1)
    assert title == "Segment lungs"


def test_module_has_module_widget_logic_and_test_classes_and_the_logic_delegates():
    tree = ast.parse(MODULE.read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    for name in ("FusionLungSeg", "FusionLungSegWidget", "FusionLungSegLogic", "FusionLungSegTest"):
        assert name in classes, name
    logic_src = ast.get_source_segment(MODULE.read_text(), classes["FusionLungSegLogic"])
    assert "LungSegmentationLogic" in logic_src and "qt." not in logic_src


def test_widget_stays_thin_no_image_processing_in_the_panel():
    widget_src = ast.get_source_segment(
        MODULE.read_text(),
        next(n for n in ast.parse(MODULE.read_text()).body if getattr(n, "name", "") == "FusionLungSegWidget"),
    )
    for forbidden in ("numpy", "torch", "SimpleITK", "arrayFromVolume", "LungSegmenter("):
        assert forbidden not in widget_src, forbidden
    assert len(widget_src.splitlines()) < 250


def test_library_never_imports_slicer_or_qt_outside_mrml():
    for path in (REPO / "FusionLungSegLib").glob("*.py"):
        if path.name == "mrml.py":
            continue
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(slicer|qt|ctk|PythonQt)\b", text, re.M), path.name


def test_cmake_builds_a_self_contained_scripted_module():
    top = (REPO / "CMakeLists.txt").read_text()
    for needle in (
        "project(FusionLungSeg)",
        'EXTENSION_CATEGORY "Segmentation"',
        "find_package(Slicer",
        "add_subdirectory(FusionLungSeg)",
    ):
        assert needle in top
    mod = (REPO / "FusionLungSeg" / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in mod and "FusionLungSegLib" in mod and "Resources/" in mod


def test_requirements_file_covers_every_package_the_module_checks():
    tree = ast.parse(MODULE.read_text())
    required = next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "REQUIRED_PACKAGES"
    )
    lines = [ln.split("#")[0].strip() for ln in (REPO / "Resources" / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=!~ ;\[]", ln, maxsplit=1)[0].lower() for ln in lines if ln}
    assert set(required.values()) <= names
