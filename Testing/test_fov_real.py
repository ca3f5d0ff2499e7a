"""Crops of a real volume with lung labels (LUNG1-001), segmented by the bundled model.

Each crop is what a cardiac reconstruction, a Crop Volume ROI or half of the patient leaves in view; its
answer is the reference inside the crop, compared in physical space.  The volume is shrunk in-plane
(2 x 2 voxels averaged, about 2 mm pixels) to keep the test short; the network sees millimetres, so
the crops are the same anatomy at a coarser grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATA, require

from FusionLungSegLib.evaluation.crops import compare_sides, crop_image, crop_suite, resample_like
from FusionLungSegLib.nets import weights as W

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not W.BUNDLED_SHA256, reason="no trained weights are bundled yet")]

CROPS = ("cardiac_220mm", "roi_right_lung", "roi_left_lung", "left_half", "anterior_60")


@pytest.fixture(scope="module")
def lung1():
    from FusionLungSegLib.io import read_image

    ct = read_image(require(DATA / "dev/NSCLCRadiomics_LUNG1-001_CT.nii.gz"))
    ref = sitk.Cast(read_image(require(DATA / "dev/NSCLCRadiomics_LUNG1-001_lungmask.nii.gz")), sitk.sitkUInt8)
    small = sitk.Cast(sitk.BinShrink(ct, [2, 2, 1]), ct.GetPixelID())
    return small, resample_like(ref, small)


@pytest.fixture(scope="module")
def segmenter():
    from FusionLungSegLib.segmenter import LungSegmenter

    return LungSegmenter(device="cpu", progress=False)


@pytest.mark.parametrize("name", CROPS)
def test_each_crop_finds_each_lung_on_its_own_side_and_says_the_field_cuts_it(lung1, segmenter, name):
    ct, ref = lung1
    spec = crop_suite(ct, ref, [name])[0]
    crop = crop_image(ct, spec)
    result = segmenter.run(crop)
    pred = sitk.GetArrayFromImage(result.labels)
    answer = sitk.GetArrayFromImage(resample_like(ref, crop))
    scores = compare_sides(pred, answer, float(np.prod(crop.GetSpacing())) / 1000)
    for side in ("right", "left"):
        if scores[f"ref_{side}_ml"] >= 300:  # a lung, or most of one
            assert scores[f"dice_{side}"] >= 0.95, (name, scores)
        elif scores[f"ref_{side}_ml"] >= 50:  # the part of the other lung a Crop Volume ROI leaves (about 115 mL)
            assert scores[f"dice_{side}"] >= 0.6, (name, scores)  # found (0.71 and 0.88 measured; not yet 0.95)
        assert scores[f"{side}_as_other"] < 0.05, (name, scores)  # no side swapped
    assert not result.qc["ok"]
    assert any("field of view cuts" in f for f in result.qc["flags"]), result.qc["flags"]


def test_console_on_a_cropped_volume_node_matches_the_cli(lung1, tmp_path, monkeypatch):
    """Slicer's Python console on a Crop Volume-style node (a sub-grid in the same physical space) gives
    the CLI's labels for the same crop, voxel for voxel."""
    import subprocess
    import sys

    pytest.importorskip("slicer", reason="slicer-core wheel not installed (pip install slicer-core)")
    from mrml_fixtures import shared_session

    from FusionLungSegLib.mrml import LungSegmentationLogic, sitk_to_volume_node

    monkeypatch.setenv("FUSIONLUNGSEG_BACKEND", "torch")  # one engine and precision for both front doors
    ct, ref = lung1
    crop = crop_image(ct, crop_suite(ct, ref, ["roi_left_lung"])[0])
    sitk.WriteImage(crop, str(tmp_path / "crop.nrrd"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "FusionLungSegLib",
            "segment",
            str(tmp_path / "crop.nrrd"),
            str(tmp_path / "cli.nrrd"),
            "--quiet",
            "--device",
            "cpu",
            "--precision",
            "fp32",
        ],
        check=True,
    )
    cli = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli.nrrd")))
    session = shared_session()
    session.scene.Clear(0)
    try:
        node = sitk_to_volume_node(crop, session.scene, "cropped CT")
        logic = LungSegmentationLogic(session.scene)
        logic.segment(node, device="cpu", precision="fp32")
        console = sitk.GetArrayFromImage(logic.last_label_image)
    finally:
        session.scene.Clear(0)
    assert console.shape == cli.shape
    assert np.count_nonzero(console != cli) == 0
    answer = sitk.GetArrayFromImage(resample_like(ref, crop))
    assert np.mean(console[answer == 2] == 2) > 0.9  # the left lung, labelled left
