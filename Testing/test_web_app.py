"""The page's handlers in this process (trame-slicer's real scene and views, no browser): the run goes to a worker
and the page stays live, a second click while it runs is ignored with a message, Cancel leaves the scene as it
was, errors go to the page."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from conftest import SAMPLE_DICOM

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install -e '.[web]')")

from FusionLungSegLib.options import SegmentOptions  # noqa: E402
from FusionLungSegLib.web.app import EDIT_TOOLS, LungWebApp  # noqa: E402

OPTIONS = SegmentOptions(fast=True, precision="fp32", backend="torch", device="cpu")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("webapp")
    shutil.copytree(SAMPLE_DICOM, root / "data" / "sample")
    (root / "data" / "notes.nrrd").write_text("not an image")
    return LungWebApp({"data_dir": root / "data", "out_dir": root / "out", "options": OPTIONS})


def _nodes(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_page_lists_cases_and_shows_errors(app):
    assert app.state.cases == ["notes", "sample"]
    app.open_case("notes")
    assert app.state.error.startswith("error: ") and "cannot read image" in app.state.error
    app.open_case("../../etc/passwd")
    assert "outside the data folder" in app.state.error
    app.open_case("sample")
    assert app.state.error == "" and "ready to segment" in app.state.status
    assert app.attach_effect_pipelines() == 0  # every editor pipeline has its view (trame-slicer 2.0.0 fix)
    assert [name for name, _, _ in EDIT_TOOLS] == ["No tool", "Paint", "Erase", "Scissors", "Islands", "Smoothing"]


def test_second_click_is_ignored_and_cancel_changes_nothing(app):
    app.open_case("sample")
    scene = app.slicer_app.scene
    before = _nodes(scene)

    async def click_twice_then_cancel():
        app.on_segment()
        assert app.state.running and app.session.busy
        app.on_segment()
        assert "already segmenting" in app.state.status
        app.on_cancel()
        while app.state.running:
            await asyncio.sleep(0.05)

    asyncio.run(click_twice_then_cancel())
    assert app.state.status == "cancelled; nothing was changed" and app.state.error == ""
    assert _nodes(scene) == before and app.state.volumes == []

    async def run():
        app.on_segment()
        while app.state.running:
            await asyncio.sleep(0.05)

    asyncio.run(run())
    assert app.state.error == "" and app.state.status.startswith("done in")
    assert [r["name"] for r in app.state.volumes] == ["right lung", "left lung", "both lungs"]
    assert app.state.volumes[0]["ml"] > 0 and app.state.qc_ok is not None
    segments = app.slicer_app.segmentation_editor.get_segment_names()
    assert segments == ["right lung", "left lung"]
    app.on_export()
    assert app.state.error == "" and len(app.state.exported) == 5  # with the DICOM SEG


def test_open_outside_the_data_folder_stops_before_serving(tmp_path):
    import subprocess
    import sys

    (tmp_path / "data").mkdir()
    (tmp_path / "secret.nii.gz").write_bytes(b"outside")
    cmd = [sys.executable, "-m", "FusionLungSegLib", "web", "--data", str(tmp_path / "data"), "--port", "0"]
    run = subprocess.run([*cmd, "--open", "../secret.nii.gz"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "error: '../secret.nii.gz' is outside the data folder" in run.stderr
