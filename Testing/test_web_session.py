"""What the web page does, on a real MRML scene (slicer-core), without a browser: cases only under the data
folder, the CLI's errors, the same labels as the library, cancel and one run at a time, exports."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_DICOM
from mrml_fixtures import shared_session

from FusionLungSegLib.io import read_image
from FusionLungSegLib.mrml import labels_from_segmentation
from FusionLungSegLib.options import SegmentOptions
from FusionLungSegLib.segmenter import SegmentationCancelled
from FusionLungSegLib.web.session import CaseRefused, WebSession

#: small and exact: the bundled sample's two slices, 160 px, fp32 in torch (the same arithmetic each run)
OPTIONS = SegmentOptions(fast=True, precision="fp32", backend="torch", device="cpu")


@pytest.fixture
def scene():
    s = shared_session().scene
    s.Clear(0)
    yield s
    s.Clear(0)


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    shutil.copytree(SAMPLE_DICOM, d / "sample")
    (d / "broken.nii.gz").write_bytes(b"not an image")
    (tmp_path / "secret.nii.gz").write_bytes(b"outside")
    return d


@pytest.fixture
def session(scene, data, tmp_path):
    return WebSession(scene, data, tmp_path / "out", OPTIONS)


def _run(session, **page_options):
    task = session.start(**page_options)
    assert task.wait(300)
    return session.finish()


def test_cases_are_listed_and_nothing_outside_the_data_folder_opens(session, data):
    assert session.list_cases() == ["broken", "sample"]
    for name in ("../secret.nii.gz", str(data.parent / "secret.nii.gz"), "sample/../../secret.nii.gz"):
        with pytest.raises(CaseRefused, match="outside the data folder"):
            session.open(name)
    with pytest.raises(CaseRefused, match="no such case"):
        session.open("missing.nii.gz")
    assert session.open("sample/").case_id == "sample"  # a path under the folder works too


def test_a_broken_file_gives_the_clis_error_and_keeps_the_open_case(session, data):
    session.open("sample")
    volume = session.volume_node
    with pytest.raises(ValueError) as page_error:
        session.open("broken")
    with pytest.raises(ValueError) as cli_error:
        read_image(data / "broken.nii.gz")
    assert str(page_error.value) == str(cli_error.value)
    assert session.volume_node is volume and session.case.case_id == "sample"


def test_segment_gives_the_librarys_labels_and_exports_them(session, tmp_path):
    import slicerio

    session.open("sample")
    summary = _run(session)
    expected = OPTIONS.segmenter().run(read_image(SAMPLE_DICOM))
    in_scene = labels_from_segmentation(session.segmentation_node, session.volume_node)
    assert np.array_equal(sitk.GetArrayFromImage(in_scene), sitk.GetArrayFromImage(expected.labels))
    assert summary.right_ml == pytest.approx(expected.volumes_ml["right lung"], abs=0.05)
    assert summary.left_ml == pytest.approx(expected.volumes_ml["left lung"], abs=0.05)
    assert summary.qc == expected.qc and summary.precision == "fp32"

    written = session.export()
    assert set(written) == {"seg.nrrd", "nii.gz", "png", "json", "dcm"}  # DICOM input: a DICOM SEG too
    assert all(p.parent == tmp_path / "out" and p.stat().st_size > 0 for p in written.values())
    exported = sitk.ReadImage(str(written["nii.gz"]))
    assert np.array_equal(sitk.GetArrayFromImage(exported), sitk.GetArrayFromImage(expected.labels))
    seg = slicerio.read_segmentation(str(written["seg.nrrd"]))
    assert {s["name"]: s["labelValue"] for s in seg["segments"]} == {"right lung": 1, "left lung": 2}
    report = json.loads(written["json"].read_text())
    assert report["exported_lung_ml"] == {"right lung": summary.right_ml, "left lung": summary.left_ml}


def test_export_takes_the_users_corrections(session):
    session.open("sample")
    _run(session)
    session.segmentation_node.GetSegmentation().RemoveSegment("left_lung")
    labels = sitk.GetArrayFromImage(session.labels())
    assert np.count_nonzero(labels == 2) == 0 and np.count_nonzero(labels == 1) > 0


def test_cancel_leaves_the_scene_as_it_was_and_one_run_at_a_time(session, scene):
    session.open("sample")
    nodes = scene.GetNumberOfNodes()
    task = session.start()
    with pytest.raises(RuntimeError, match="already running"):
        session.start()
    task.cancel()
    assert task.wait(300)
    with pytest.raises(SegmentationCancelled):
        session.finish()
    assert scene.GetNumberOfNodes() == nodes and session.summary is None
    with pytest.raises(ValueError, match="segment the lungs first"):
        session.export()
    assert _run(session).right_ml > 0  # the next run works


def test_page_options_change_the_run(session):
    assert session.run_options(precision="bf16", fast=False) == SegmentOptions(
        precision="bf16", backend="torch", device="cpu"
    )
    assert session.run_options(device="", precision=None) == OPTIONS
